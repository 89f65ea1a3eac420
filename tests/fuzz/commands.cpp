// The admin command handler, both dialects, fed in fuzzer-chosen pieces: every
// reply is well-formed (native: lines, the last "ok ..." / "err CODE ..." /
// "pong", the ones before it list or help lines; legacy: one "CMD:ARG:"
// message), nothing is answered after the connection ended, and the registry
// keeps its limit. With a secret (the handshake, HMAC-SHA256 over a fresh nonce),
// nothing the fuzzer sends registers, steers or changes anything.
#include "fuzz.hpp"

using namespace harmony;

namespace {
bool starts(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

void check_native(const std::string& reply) {
  FUZZ_CHECK(!reply.empty() && reply.back() == '\n');
  std::vector<std::string_view> lines;
  std::string_view rest = reply;
  while (!rest.empty()) {
    std::size_t end = rest.find('\n');
    lines.push_back(rest.substr(0, end));
    rest.remove_prefix(end + 1);
  }
  std::string_view last = lines.back();
  for (std::size_t i = 0; i + 1 < lines.size(); ++i)
    FUZZ_CHECK(starts(lines[i], "backend id=") || starts(lines[i], "# "));
  if (starts(last, "err ")) {
    std::string_view code = last.substr(4, last.find(' ', 4) == std::string_view::npos ? 0 : last.find(' ', 4) - 4);
    FUZZ_CHECK(!code.empty());
    for (char c : code) FUZZ_CHECK((c >= 'a' && c <= 'z') || c == '-');
    FUZZ_CHECK(lines.size() == 1);
  } else {
    FUZZ_CHECK(last == "ok" || starts(last, "ok ") || last == "pong");
  }
}

void check_legacy(const std::string& reply) {
  std::size_t colon = reply.find(':');
  FUZZ_CHECK(colon != std::string::npos && reply.back() == ':');
  std::string_view command(reply.data(), colon);
  FUZZ_CHECK(detail::is_legacy_command(command) || command == "BID" || command == "ERR");  // ERR: the refusal
  FUZZ_CHECK(reply.find(':', colon + 1) == reply.size() - 1);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  bool refuse_legacy = !in.empty() && (in[0] & 0x10);
  bool with_secret = !in.empty() && (in[0] & 0x08);
  fuzz::split_input s = fuzz::split(in);
  std::size_t max_line = 64 + (in.empty() ? 0 : static_cast<unsigned char>(in[0]) >> 5) * 512;

  fuzz::admin_world world;
  detail::admin_protocol p = fuzz::agent_connection(refuse_legacy, max_line, with_secret ? "fuzz secret" : "");
  bool ended = false;
  std::size_t lines = 0, colons = 0;
  for (std::string_view piece : s.pieces) {
    for (char c : piece) lines += c == '\n', colons += c == ':';
    detail::admin_result r = world.feed(p, piece);
    if (ended) FUZZ_CHECK(r.replies.empty() && r.effects.empty());
    // At most one reply per message, and one more (the error) for the line that is too long.
    FUZZ_CHECK(r.replies.size() <= std::max(lines, colons) + 1);
    for (const std::string& reply : r.replies) {
      if (p.current_dialect() == detail::dialect::legacy) check_legacy(reply);
      else check_native(reply);
    }
    for (const detail::admin_effect& e : r.effects) {
      if (e.what == detail::admin_effect::kind::end) {
        FUZZ_CHECK(&e == &r.effects.back());
        ended = true;
      }
      if (e.what == detail::admin_effect::kind::bind_agent) FUZZ_CHECK(detail::is_backend_id(e.id) || !e.id.empty());
      if (e.what == detail::admin_effect::kind::set_concurrency)
        FUZZ_CHECK(e.limit >= min_concurrency && e.limit <= max_concurrency);
    }
    FUZZ_CHECK(ended == p.ended());
    FUZZ_CHECK(world.backends.lock()->size() <= fuzz::admin_world::limits().backends);
    if (with_secret && p.current_dialect() != detail::dialect::legacy) {
      FUZZ_CHECK(world.backends.lock()->size() == 0);
      FUZZ_CHECK(world.limit == -1);
      for (const detail::admin_effect& e : r.effects) FUZZ_CHECK(e.what == detail::admin_effect::kind::end);
    }
    if (p.current_dialect() == detail::dialect::legacy && refuse_legacy) FUZZ_CHECK(ended);
  }
  return 0;
}
