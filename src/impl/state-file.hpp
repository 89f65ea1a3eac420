namespace harmony {
namespace detail {

// >>state-file  sans-IO state file: the kept registry as versioned text, and back
// What --state-file keeps of one backend that registered over the admin port, as
// plain values: the I/O layer writes format_state()'s text atomically and hands
// what it reads to parse_state(), the one entry point for untrusted bytes.
//
//   harmony-state 1
//   backend id=5F38…7BDA kind=legacy host=10.0.0.7 addr=10.0.0.7 port=11081 weight=1000 maxconn=0 backup=0 proxy=none drained=0 state=ready ack=1764651234567
//   end 1
//
// One `backend` line per backend: space-separated key=value fields in any order;
// unknown keys are skipped (a later version 1 writer may add some); `-` is an empty
// value. `end N` closes the file and counts the backend lines, so a cut file is told
// from a complete one. Lines starting with `#` and blank lines are comments.
enum class kept_kind : std::uint8_t {
  legacy,  // a harmony.js agent: no live connection, kept alive by acks
  native,  // a harmony/1 agent: offline until its agent connects and registers again
};

struct state_record {
  std::string id;
  kept_kind kind = kept_kind::legacy;
  std::string host;  // where it is reached, as registered (a name or an address)
  std::string addr;  // the address it resolved to, numeric; empty while it has no port
  std::uint16_t port = 0;  // 0: no service port yet
  int weight = default_weight;
  int maxconn = 0;
  bool backup = false;
  proxy_protocol proxy = proxy_protocol::none;
  bool drained = false;  // by an operator
  readiness reported = readiness::ready;  // by its agent
  std::int64_t ack_unix_ms = 0;  // the last ack, wall clock (ms since 1970)
  std::string source;
};

struct state_problem {
  std::size_t line = 0;  // 1-based; 0 for the file as a whole
  std::string what;
};

struct parsed_state {
  std::vector<state_record> records;   // every backend line that could be read
  std::vector<state_problem> problems;  // what could not, line by line
  bool complete = false;                // the `end` line was found and its count matches
};

inline constexpr int state_version = 1;
inline constexpr std::size_t max_state_problems = 100;  // problems listed beyond this are counted only

inline const char* to_string(kept_kind k) noexcept { return k == kept_kind::native ? "native" : "legacy"; }

// A value the format can carry: no blank, no control byte, not empty (written as `-`).
inline bool state_token(std::string_view v) noexcept {
  for (char c : v)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  return true;
}

// The text of a state file holding `records`. A record whose text fields the format
// cannot carry is left out (none can come from the admin parsers, which split on blanks).
inline std::string format_state(const std::vector<state_record>& records) {
  std::string out = "# harmony state file: backends registered over the admin port (README, State file)\n";
  out += "harmony-state " + std::to_string(state_version) + "\n";
  auto text = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
  std::size_t written = 0;
  for (const state_record& r : records) {
    if (!is_backend_id(r.id) || !state_token(r.host) || !state_token(r.addr) || !state_token(r.source)) continue;
    out += "backend id=" + r.id + " kind=" + to_string(r.kind) + " host=" + text(r.host) + " addr=" + text(r.addr) +
           " port=" + std::to_string(r.port) + " weight=" + std::to_string(r.weight) +
           " maxconn=" + std::to_string(r.maxconn) + " backup=" + (r.backup ? "1" : "0") +
           " proxy=" + harmony::to_string(r.proxy) + " drained=" + (r.drained ? "1" : "0") + " state=" + harmony::to_string(r.reported) +
           " ack=" + std::to_string(r.ack_unix_ms) + " source=" + text(r.source) + "\n";
    ++written;
  }
  out += "end " + std::to_string(written) + "\n";
  return out;
}

namespace state_parsing {

inline bool flag_value(std::string_view v, bool& out) noexcept {
  if (v == "0" || v == "1") {
    out = v == "1";
    return true;
  }
  return false;
}

// One `backend` line's fields (after the word); what is wrong, empty when it reads.
inline std::string backend_line(std::string_view fields, state_record& r) {
  bool has_id = false, has_host = false, has_port = false;
  std::size_t at = 0;
  while (at < fields.size()) {
    while (at < fields.size() && (fields[at] == ' ' || fields[at] == '\t')) ++at;
    std::size_t end = at;
    while (end < fields.size() && fields[end] != ' ' && fields[end] != '\t') ++end;
    std::string_view field = fields.substr(at, end - at);
    at = end;
    if (field.empty()) continue;
    std::size_t eq = field.find('=');
    if (eq == std::string_view::npos || eq == 0) return "'" + std::string(field) + "' is not key=value";
    std::string_view key = field.substr(0, eq), value = field.substr(eq + 1);
    if (value.empty()) return std::string(key) + " has no value";
    // What format_state could not write back (a control byte) is not read either.
    if (!state_token(value)) return std::string(key) + " holds a control character";
    std::string text = value == "-" ? std::string() : std::string(value);
    std::uint64_t n = 0;
    long long number = 0;
    if (key == "id") {
      if (!is_backend_id(value)) return "id '" + std::string(value) + "' is not 32 uppercase hex digits";
      r.id = text;
      has_id = true;
    } else if (key == "kind") {
      if (value == "legacy") r.kind = kept_kind::legacy;
      else if (value == "native") r.kind = kept_kind::native;
      else return "kind '" + std::string(value) + "' is not legacy or native";
    } else if (key == "host") {
      r.host = text;
      has_host = true;
    } else if (key == "addr") {
      r.addr = text;
    } else if (key == "port") {
      if (!parse_uint(value, 65535, n)) return "port '" + std::string(value) + "' is not 0 to 65535";
      r.port = static_cast<std::uint16_t>(n);
      has_port = true;
    } else if (key == "weight") {
      if (parse_weight(value, r.weight)) return "weight '" + std::string(value) + "' is out of range";
    } else if (key == "maxconn") {
      if (parse_integer(value, 0, max_maxconn, number)) return "maxconn '" + std::string(value) + "' is out of range";
      r.maxconn = static_cast<int>(number);
    } else if (key == "backup") {
      if (!flag_value(value, r.backup)) return "backup is 0 or 1";
    } else if (key == "proxy") {
      if (parse_proxy_protocol(value, r.proxy)) return "proxy '" + std::string(value) + "' is not none, v1 or v2";
    } else if (key == "drained") {
      if (!flag_value(value, r.drained)) return "drained is 0 or 1";
    } else if (key == "state") {
      if (parse_readiness(value, r.reported)) return "state '" + std::string(value) + "' is not ready, drain or down";
    } else if (key == "ack") {
      if (parse_integer(value, 0, std::numeric_limits<long long>::max(), number))
        return "ack '" + std::string(value) + "' is not a time";
      r.ack_unix_ms = number;
    } else if (key == "source") {
      r.source = text;
    }  // another key: from a later writer of this version, skipped
  }
  if (!has_id) return "no id";
  if (!has_host) return "no host";
  if (!has_port) return "no port";
  if (r.port != 0 && r.addr.empty()) return "a port but no addr";
  return {};
}

}  // namespace state_parsing

// Reads a state file's text. Never fails as a whole: what can be read is returned,
// and each line that cannot (and a missing or wrong `end`) is a problem. A file of
// another version gives no record. Duplicate ids: the first line wins.
inline parsed_state parse_state(std::string_view text) {
  parsed_state out;
  auto problem = [&](std::size_t line, std::string what) {
    if (out.problems.size() < max_state_problems) out.problems.push_back(state_problem{line, std::move(what)});
  };
  bool versioned = false, ended = false;
  std::size_t line_number = 0, backend_lines = 0;
  std::unordered_map<std::string, std::size_t> first_line;  // by id
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    bool cut = end == std::string_view::npos;  // the last line has no newline: written partly
    if (cut) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;
    line.remove_prefix(first);
    if (cut && versioned) {
      problem(line_number, "the file ends inside this line (cut short)");
      break;
    }
    if (ended) {
      problem(line_number, "text after the end line");
      break;
    }
    std::size_t space = line.find_first_of(" \t");
    std::string_view word = line.substr(0, space);
    std::string_view rest = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    if (!versioned) {
      std::uint64_t version = 0;
      if (word != "harmony-state" || !parse_uint(rest, 1000000, version)) {
        problem(line_number, "not a harmony state file (expected 'harmony-state " + std::to_string(state_version) + "')");
        return out;
      }
      if (version != static_cast<std::uint64_t>(state_version)) {
        problem(line_number, "version " + std::to_string(version) + " is not " + std::to_string(state_version));
        return out;
      }
      versioned = true;
      continue;
    }
    if (word == "backend") {
      ++backend_lines;
      state_record r;
      std::string wrong = state_parsing::backend_line(rest, r);
      if (wrong.empty()) {
        auto seen = first_line.emplace(r.id, line_number);
        if (!seen.second) wrong = "id " + r.id + " is listed on line " + std::to_string(seen.first->second) + " already";
      }
      if (!wrong.empty()) problem(line_number, wrong);
      else out.records.push_back(std::move(r));
      continue;
    }
    if (word == "end") {
      std::uint64_t count = 0;
      if (!parse_uint(rest, std::numeric_limits<std::uint32_t>::max(), count)) {
        problem(line_number, "the end line has no count");
      } else if (count != backend_lines) {
        problem(line_number, "the end line counts " + std::to_string(count) + " backends, the file has " +
                                 std::to_string(backend_lines));
      } else {
        out.complete = true;
      }
      ended = true;
      continue;
    }
    problem(line_number, "unknown line '" + std::string(word) + "'");
  }
  if (!versioned && out.problems.empty()) problem(0, "empty: not a harmony state file");
  else if (versioned && !ended) problem(line_number, "no end line: the file is cut short");
  return out;
}

}  // namespace detail
}  // namespace harmony
