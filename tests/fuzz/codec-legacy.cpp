// The legacy (harmony.js) token codec and the dialect detection, against a
// reference parser written another way; decoded messages re-encode to a
// stream that decodes to the same messages.
#include "fuzz.hpp"

using namespace harmony;
using message = std::pair<std::string, std::string>;

namespace {
// The reference: cut at every ':'; the piece after the last ':' is an unfinished
// token. Empty tokens between messages are skipped; BYE has no argument; any
// other command is followed by its argument token.
bool reference(std::string_view in, std::vector<message>& out) {
  std::vector<std::string_view> tokens;
  std::size_t start = 0;
  for (std::size_t i = 0; i < in.size(); ++i)
    if (in[i] == ':') {
      tokens.push_back(in.substr(start, i - start));
      start = i + 1;
    }
  std::string_view unfinished = in.substr(start);
  std::string command;
  bool want_argument = false;
  for (std::string_view t : tokens) {
    if (t.size() > detail::legacy_parser::max_token) return false;
    if (want_argument) {
      out.emplace_back(command, std::string(t));
      want_argument = false;
    } else if (t.empty()) {
    } else if (t == "BYE") {
      out.emplace_back("BYE", "");
    } else if (detail::is_legacy_command(t)) {
      command = std::string(t);
      want_argument = true;
    } else {
      return false;
    }
  }
  return unfinished.size() <= detail::legacy_parser::max_token;
}

std::vector<message> decode(std::string_view in, bool& ok) {
  std::vector<message> got;
  detail::legacy_parser p;
  ok = p.feed(in, [&](std::string_view c, std::string_view a) { got.emplace_back(std::string(c), std::string(a)); });
  return got;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);

  bool ok = false;
  std::vector<message> got = decode(in, ok);
  std::vector<message> want;
  bool want_ok = reference(in, want);
  FUZZ_CHECK(ok == want_ok);
  // A failing stream delivers the messages before the bad token.
  FUZZ_CHECK(got == want);

  std::string again;
  for (const message& m : got) {
    FUZZ_CHECK(detail::is_legacy_command(m.first));
    FUZZ_CHECK(m.second.find(':') == std::string::npos);
    FUZZ_CHECK(m.second.size() <= detail::legacy_parser::max_token);
    FUZZ_CHECK(m.first != "BYE" || m.second.empty());
    again += m.first + ":" + (m.first == "BYE" ? "" : m.second + ":");
  }
  bool again_ok = false;
  FUZZ_CHECK(decode(again, again_ok) == got);
  FUZZ_CHECK(again_ok);

  // Dialect detection: once decided, more bytes never change the decision; a
  // stream the legacy parser takes whole starts as legacy or undecided.
  detail::dialect first = detail::dialect::undecided;
  for (std::size_t n = 0; n <= std::min<std::size_t>(in.size(), 32); ++n) {
    detail::dialect d = detail::detect_dialect(in.substr(0, n));
    if (first != detail::dialect::undecided) FUZZ_CHECK(d == first);
    first = d;
  }
  if (!in.empty() && in.front() != ':' && in.find(':') != std::string_view::npos && ok && !got.empty() &&
      in.substr(0, in.find(':')) == got.front().first)
    FUZZ_CHECK(detail::detect_dialect(in) == detail::dialect::legacy);

  int w = detail::legacy_weight(in);
  FUZZ_CHECK(w >= min_weight && w <= max_weight);
  return 0;
}
