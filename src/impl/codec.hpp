namespace harmony {
namespace detail {

// >>codec  sans-IO admin protocol: dialect detection, legacy tokens, native lines
// The admin protocol as pure functions and resumable parsers over caller bytes:
// no sockets, no allocation beyond the partial token or line they keep.

enum class dialect { undecided, legacy, native };

// harmony.js agents speak first with one of these tokens; anything else is native.
inline bool is_legacy_command(std::string_view t) noexcept {
  return t == "NID" || t == "ID" || t == "BAL" || t == "SPORT" || t == "ACK" || t == "CLOSE" || t == "BYE";
}

// Decides the dialect from the first bytes of a connection.
inline dialect detect_dialect(std::string_view first) noexcept {
  if (first.empty()) return dialect::undecided;
  if (first.front() == ':') return dialect::legacy;  // an empty token, which legacy agents skip
  std::size_t upper = 0;
  while (upper < first.size() && first[upper] >= 'A' && first[upper] <= 'Z') ++upper;
  if (upper == first.size()) {
    // Still a prefix of a legacy command? Then wait for more bytes.
    for (std::string_view c : {"NID", "ID", "BAL", "SPORT", "ACK", "CLOSE", "BYE"})
      if (c.substr(0, upper) == first.substr(0, upper)) return dialect::undecided;
    return dialect::native;
  }
  return first[upper] == ':' && is_legacy_command(first.substr(0, upper)) ? dialect::legacy : dialect::native;
}

// The legacy token stream: tokens end with ':'; a message is a command token and
// one argument token, except BYE. Tokens may split anywhere across reads.
class legacy_parser {
 public:
  static constexpr std::size_t max_token = legacy_max_token;

  // Calls on_message(command, argument) per complete message. Returns false on
  // a malformed stream (unknown command, oversized token: too_long()); the
  // connection should close.
  template <class OnMessage>
  bool feed(std::string_view bytes, OnMessage&& on_message) {
    while (!bytes.empty()) {
      std::size_t colon = bytes.find(':');
      std::string_view piece = bytes.substr(0, colon);
      if (token_.size() + piece.size() > max_token) {
        too_long_ = true;
        return false;
      }
      token_.append(piece.data(), piece.size());
      if (colon == std::string_view::npos) return true;
      bytes.remove_prefix(colon + 1);
      if (!token(on_message)) return false;
      token_.clear();
    }
    return true;
  }
  bool too_long() const noexcept { return too_long_; }  // feed() failed on a token over max_token

 private:
  template <class OnMessage>
  bool token(OnMessage& on_message) {
    if (want_argument_) {
      want_argument_ = false;
      on_message(std::string_view(command_), std::string_view(token_));
      return true;
    }
    if (token_.empty()) return true;
    if (token_ == "BYE") {
      on_message(std::string_view(token_), std::string_view());
      return true;
    }
    if (!is_legacy_command(token_)) return false;
    command_ = token_;
    want_argument_ = true;
    return true;
  }

  std::string token_;
  std::string command_;
  bool want_argument_ = false;
  bool too_long_ = false;
};

// Splits a byte stream into lines (LF or CRLF), with a length limit.
class line_splitter {
 public:
  explicit line_splitter(std::size_t max_line = default_max_admin_line) : max_line_(max_line) {}

  // Calls on_line(line) per complete line; returns false once a line is too long.
  template <class OnLine>
  bool feed(std::string_view bytes, OnLine&& on_line) {
    while (!bytes.empty()) {
      std::size_t end = bytes.find('\n');
      std::string_view piece = bytes.substr(0, end);
      if (partial_.size() + piece.size() > max_line_) return false;
      if (end == std::string_view::npos) {
        partial_.append(piece.data(), piece.size());
        return true;
      }
      bytes.remove_prefix(end + 1);
      std::string_view line = piece;
      if (!partial_.empty()) {
        partial_.append(piece.data(), piece.size());
        line = partial_;
      }
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      on_line(line);
      partial_.clear();
    }
    return true;
  }

 private:
  std::size_t max_line_;
  std::string partial_;
};

// A native command line: words separated by blanks; words of the form key=value
// are options, the others positional arguments.
struct command_line {
  std::string_view verb;
  std::vector<std::string_view> args;
  std::vector<std::pair<std::string_view, std::string_view>> options;

  bool option(std::string_view key, std::string_view& value) const {
    for (auto& o : options)
      if (o.first == key) {
        value = o.second;
        return true;
      }
    return false;
  }
};

inline command_line parse_command(std::string_view line) {
  command_line c;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (start == i) break;
    std::string_view word = line.substr(start, i - start);
    std::size_t eq = word.find('=');
    if (c.verb.empty()) c.verb = word;
    else if (eq != std::string_view::npos && eq > 0) c.options.emplace_back(word.substr(0, eq), word.substr(eq + 1));
    else c.args.push_back(word);
  }
  return c;
}

// harmony.js's BAL: a number in [min_weight, max_weight] (>>types) is the weight;
// anything else means default_weight (500), as in harmony.js for a non-number:
// no digits, other characters, 0, and a number above max_weight too (the agent
// cannot be told "too heavy": the reply must echo its text). Never an error.
inline int legacy_weight(std::string_view text) noexcept {
  int w = default_weight;
  return parse_weight(text, w) ? default_weight : w;
}

}  // namespace detail
}  // namespace harmony
