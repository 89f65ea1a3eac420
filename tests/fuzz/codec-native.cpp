// The native (harmony/1) line splitter and command-line parser: lines against
// a reference cut, the length limit, and parse_command's words re-joined
// parsing to the same command.
#include "fuzz.hpp"

using namespace harmony;

namespace {
bool blank(char c) { return c == ' ' || c == '\t'; }

void check_command(std::string_view line) {
  detail::command_line c = detail::parse_command(line);
  bool has_word = false;
  for (char ch : line) has_word |= !blank(ch);
  FUZZ_CHECK(c.verb.empty() == !has_word);
  std::size_t words = 0;
  std::string rebuilt(c.verb);
  auto word_ok = [&](std::string_view w) {
    FUZZ_CHECK(!w.empty());
    for (char ch : w) FUZZ_CHECK(!blank(ch));
    // Every word is a piece of the line, in place.
    FUZZ_CHECK(w.data() >= line.data() && w.data() + w.size() <= line.data() + line.size());
  };
  if (!c.verb.empty()) word_ok(c.verb), ++words;
  for (std::string_view a : c.args) {
    word_ok(a);
    FUZZ_CHECK(a.find('=') == std::string_view::npos || a.front() == '=');
    rebuilt += " " + std::string(a);
    ++words;
  }
  for (auto& o : c.options) {
    FUZZ_CHECK(!o.first.empty() && o.first.find('=') == std::string_view::npos);
    word_ok(o.first);
    FUZZ_CHECK(o.second.empty() || !blank(o.second.front()));
    rebuilt += " " + std::string(o.first) + "=" + std::string(o.second);
    ++words;
  }
  // The words counted another way.
  std::size_t count = 0;
  for (std::size_t i = 0; i < line.size(); ++i)
    if (!blank(line[i]) && (i == 0 || blank(line[i - 1]))) ++count;
  FUZZ_CHECK(count == words);

  detail::command_line again = detail::parse_command(rebuilt);
  FUZZ_CHECK(again.verb == c.verb);
  FUZZ_CHECK(again.args == c.args);
  FUZZ_CHECK(again.options == c.options);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  // The first byte picks the line limit (1..256 bytes, or the default).
  std::size_t max_line = in.empty() || in[0] == 0 ? 4096 : static_cast<unsigned char>(in[0]);
  if (!in.empty()) in.remove_prefix(1);

  std::vector<std::string> got;
  detail::line_splitter lines(max_line);
  bool ok = lines.feed(in, [&](std::string_view line) {
    got.emplace_back(line);
    check_command(line);
  });

  // The reference: the pieces between '\n's, each without one trailing '\r';
  // the first piece (finished or not) longer than the limit stops it.
  std::vector<std::string> want;
  bool want_ok = true;
  std::size_t start = 0;
  while (start <= in.size()) {
    std::size_t end = in.find('\n', start);
    std::string_view piece = in.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (piece.size() > max_line) {
      want_ok = false;
      break;
    }
    if (end == std::string_view::npos) break;
    if (!piece.empty() && piece.back() == '\r') piece.remove_suffix(1);
    want.emplace_back(piece);
    start = end + 1;
  }
  FUZZ_CHECK(ok == want_ok);
  FUZZ_CHECK(got == want);
  for (const std::string& l : got) FUZZ_CHECK(l.find('\n') == std::string::npos && l.size() <= max_line);
  check_command(in);
  return 0;
}
