// What every libFuzzer target shares (see `make fuzz` in the Makefile): the
// library compiled into the target (header-only: as inline functions, so only
// what the target calls is compiled, in a third of the whole library's time), a
// check that aborts with a message (so libFuzzer records the input as a crash),
// and a splitter of the fuzzer's bytes into control bytes and payload.
#pragma once
#define HARMONY_HEADER_ONLY
#include "../../harmony.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond);  \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace fuzz {

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// The input cut into pieces at the points the first bytes choose: byte 0 says
// how many control bytes follow (0..15), each one the length of the next piece
// (0..255); the payload after them is cut there, the rest is the last piece.
struct split_input {
  std::string_view payload;
  std::vector<std::string_view> pieces;
};

inline split_input split(std::string_view in) {
  split_input s;
  std::size_t cuts = in.empty() ? 0 : static_cast<unsigned char>(in[0]) % 16;
  std::string_view control = in.substr(in.empty() ? 0 : 1, cuts);
  s.payload = in.substr(std::min(in.size(), 1 + control.size()));
  std::string_view rest = s.payload;
  for (char c : control) {
    std::size_t n = std::min(rest.size(), static_cast<std::size_t>(static_cast<unsigned char>(c)));
    s.pieces.push_back(rest.substr(0, n));
    rest.remove_prefix(n);
  }
  s.pieces.push_back(rest);
  return s;
}

}  // namespace fuzz

namespace fuzz {

// The admin command handler's world: a small registry with counting ids (so two
// runs over the same bytes agree), plain-value services that apply the
// concurrency effect, a silent log.
struct admin_world final : harmony::detail::admin_services {
  harmony::detail::locked<harmony::detail::registry> backends;
  harmony::detail::logger log;
  std::int64_t now = 1000;
  int limit = -1;
  std::uint64_t next_id = 1;

  static harmony::detail::registry_limits limits() {
    harmony::detail::registry_limits l;
    l.backends = 8;  // small, so the limit is reached too
    return l;
  }
  admin_world()
      : backends(harmony::algorithm::leastconn, harmony::duration(60000), true, limits(), [this] {
          static const char digits[] = "0123456789ABCDEF";
          std::string id(32, '0');
          std::uint64_t v = next_id++;
          for (int i = 31; v; --i, v >>= 4) id[static_cast<std::size_t>(i)] = digits[v & 15];
          return id;
        }) {}

  harmony::server_stats stats() override { return {}; }
  int concurrency() override { return limit; }
  std::error_code resolve(const harmony::endpoint& at, harmony::detail::resolved_address& out) override {
    if (at.host.size() > 8) return make_error_code(harmony::errc::resolve_failed);
    out = harmony::detail::resolved_address::v4(198, 51, 100, static_cast<std::uint8_t>(at.host.size()), at.port);
    return {};
  }
  std::error_code add_static(std::string_view address, int weight, std::string* id_out) override {
    harmony::endpoint at;
    if (auto e = harmony::parse_endpoint(address, at)) return e;
    if (at.port == 0) return make_error_code(harmony::errc::bad_option);
    auto to = harmony::detail::resolved_address::v4(198, 51, 100, 8, at.port);
    return backends.lock()->add(at, &to, weight, false, id_out, now);
  }
  harmony::detail::admin_result feed(harmony::detail::admin_protocol& p, std::string_view bytes) {
    harmony::detail::admin_context ctx{backends, *this, log, now};
    harmony::detail::admin_result r = p.feed(bytes, ctx);
    for (const harmony::detail::admin_effect& e : r.effects)  // as the I/O layer does
      if (e.what == harmony::detail::admin_effect::kind::set_concurrency) limit = e.limit;
    return r;
  }
};

inline harmony::detail::admin_protocol agent_connection(bool refuse_legacy, std::size_t max_line,
                                                        std::string secret = {}) {
  harmony::detail::admin_protocol::config c;
  c.refuse_legacy = refuse_legacy;
  c.max_line = max_line;
  c.secret = std::move(secret);
  return harmony::detail::admin_protocol(harmony::detail::resolved_address::v4(203, 0, 113, 5, 40000), "203.0.113.5",
                                         c);
}

}  // namespace fuzz
