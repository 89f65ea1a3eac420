// Sans-IO unit tests. This unit also compiles the library implementation for the
// test binary (the reactor backend comes from the command line).
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"

#include <ostream>
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <set>

using namespace harmony;

TEST_CASE("endpoints parse HOST:PORT and [IPv6]:PORT, and reject the rest") {
  endpoint ep;
  CHECK_FALSE(parse_endpoint("127.0.0.1:3000", ep));
  CHECK(ep.host == "127.0.0.1");
  CHECK(ep.port == 3000);
  CHECK_FALSE(parse_endpoint("[::1]:8080", ep));
  CHECK(ep.host == "::1");
  CHECK(ep.port == 8080);
  CHECK(ep.to_string() == "[::1]:8080");
  CHECK_FALSE(parse_endpoint("localhost:0", ep));
  CHECK(ep.port == 0);
  for (const char* bad : {"", "3000", "host", "host:", ":80", "::1:80", "[::1]80", "[::1]", "h:65536", "h:-1",
                          "h:12a", "a b:1", "[::1:80"})
    CHECK_MESSAGE(parse_endpoint(bad, ep) == errc::bad_address, bad);
}

TEST_CASE("durations parse with units") {
  duration d{};
  CHECK_FALSE(parse_duration("500ms", d));
  CHECK(d.count() == 500);
  CHECK_FALSE(parse_duration("30s", d));
  CHECK(d.count() == 30000);
  CHECK_FALSE(parse_duration("1m", d));
  CHECK(d.count() == 60000);
  CHECK_FALSE(parse_duration("2h", d));
  CHECK(d.count() == 7200000);
  CHECK_FALSE(parse_duration("250", d));
  CHECK(d.count() == 250);
  for (const char* bad : {"", "s", "1x", "-1s", "1.5s", "99999999999999999999s", "1 s"})
    CHECK_MESSAGE(parse_duration(bad, d) == errc::bad_duration, bad);
}

TEST_CASE("error codes carry harmony messages") {
  std::error_code e = errc::queue_timeout;
  CHECK(e.category().name() == std::string("harmony"));
  CHECK(e.message() == "timed out in the wait queue");
  CHECK(e == errc::queue_timeout);
  CHECK(e != errc::queue_full);
}

TEST_CASE("socket errors compare equal to the portable std::errc conditions") {
#if defined(_WIN32)
  // Winsock codes, and the completion-port codes overlapped operations report.
  CHECK(detail::system_error_code(WSAECONNREFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(ERROR_CONNECTION_REFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(WSAECONNRESET) == std::errc::connection_reset);
  CHECK(detail::system_error_code(ERROR_NETNAME_DELETED) == std::errc::connection_reset);
  CHECK(detail::system_error_code(WSAETIMEDOUT) == std::errc::timed_out);
  CHECK(detail::system_error_code(WSAEADDRINUSE) == std::errc::address_in_use);
  CHECK(detail::system_error_code(WSAEWOULDBLOCK) == std::errc::operation_would_block);
  CHECK(detail::would_block(WSAEWOULDBLOCK));
  CHECK(detail::system_error_code(WSAECONNREFUSED).message().find("refused") != std::string::npos);
  // An unmapped code stays itself.
  CHECK(detail::system_error_code(WSAEPROVIDERFAILEDINIT) != std::errc::connection_refused);
#else
  CHECK(detail::system_error_code(ECONNREFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(ECONNRESET) == std::errc::connection_reset);
  CHECK(detail::would_block(EAGAIN));
#endif
}

namespace {
std::map<std::uint32_t, int> picks(detail::selector& s, int n) {
  std::map<std::uint32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    auto slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
    REQUIRE(slot != detail::selector::npos);
    ++counts[slot];
  }
  return counts;
}
}  // namespace

TEST_CASE("round-robin splits exactly by weight and smoothly") {
  detail::selector s(algorithm::roundrobin);
  s.insert(0, 500, 0);
  s.insert(1, 500, 0);
  s.insert(2, 1000, 0);
  auto counts = picks(s, 400);
  CHECK(counts[0] == 100);
  CHECK(counts[1] == 100);
  CHECK(counts[2] == 200);
  // Smooth: the heavy backend never gets more than two in a row.
  detail::selector t(algorithm::roundrobin);
  t.insert(0, 1000, 0);
  t.insert(1, 500, 0);
  int run = 0, longest = 0;
  for (int i = 0; i < 300; ++i) {
    auto slot = t.pick([](std::uint32_t) { return detail::selector::verdict::take; });
    run = slot == 0 ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  CHECK(longest == 2);
}

TEST_CASE("leastconn: idle backends split by weight, busy ones are avoided") {
  detail::selector s(algorithm::leastconn);
  s.insert(0, 1000, 0);
  s.insert(1, 500, 0);
  auto counts = picks(s, 300);
  CHECK(counts[0] == 200);
  CHECK(counts[1] == 100);
  // With load: slot 0 has 4 open at weight 1000 (0.004), slot 1 has 1 at 500 (0.002).
  s.set_active(0, 4);
  s.set_active(1, 1);
  auto slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
  CHECK(slot == 1);
  s.set_active(1, 3);  // 0.006 now
  slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
  CHECK(slot == 0);
}

TEST_CASE("selector skips, evicts, re-weights and removes") {
  detail::selector s(algorithm::roundrobin);
  for (std::uint32_t i = 0; i < 4; ++i) s.insert(i, 100, 0);
  auto slot = s.pick([](std::uint32_t x) {
    return x == 0 ? detail::selector::verdict::skip
                  : x == 1 ? detail::selector::verdict::evict : detail::selector::verdict::take;
  });
  CHECK((slot == 2 || slot == 3));
  CHECK(s.contains(0));
  CHECK_FALSE(s.contains(1));
  CHECK(s.size() == 3);
  s.erase(0);
  s.set_weight(2, 300);
  auto counts = picks(s, 400);
  // 3:1 from here on; the passes they had before the change may shift one pick.
  CHECK(counts[2] >= 299);
  CHECK(counts[2] <= 301);
  CHECK(counts[2] + counts[3] == 400);
  CHECK(counts.count(0) == 0);
  // Nothing left to take.
  slot = s.pick([](std::uint32_t) { return detail::selector::verdict::skip; });
  CHECK(slot == detail::selector::npos);
  CHECK(s.size() == 2);
}

TEST_CASE("a newcomer starts at the current virtual time instead of catching up") {
  detail::selector s(algorithm::roundrobin);
  s.insert(0, 100, 0);
  picks(s, 1000);
  s.insert(1, 100, 0);
  auto counts = picks(s, 100);
  CHECK(counts[0] >= 49);
  CHECK(counts[1] >= 49);
}

TEST_CASE("registry: ids are random hex, eligibility follows drain, port and acks") {
  detail::registry r(algorithm::roundrobin, duration(1000), false, {}, detail::random_id);
  detail::resolved_address a = detail::resolved_address::v4(127, 0, 0, 1, 9);
  std::string static_id, agent_id;
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, &static_id, 0));
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, true, &agent_id, 0));
  CHECK(static_id.size() == 32);
  CHECK(static_id.find_first_not_of("0123456789ABCDEF") == std::string::npos);
  CHECK(static_id != agent_id);
  std::set<std::string> seen;
  auto pick_ids = [&](std::int64_t now, int n) {
    seen.clear();
    for (int i = 0; i < n; ++i) {
      detail::pick_result p;
      if (!r.pick(now, "", {}, p)) return false;
      seen.insert(r.id_of(p.chosen));
      r.release(p.chosen, false);
    }
    return true;
  };
  REQUIRE(pick_ids(500, 4));
  CHECK(seen.size() == 2);
  // The agent's ack is 2000 ms old at 2000: only the static backend is eligible.
  REQUIRE(pick_ids(2000, 4));
  CHECK(seen == std::set<std::string>{static_id});
  CHECK_FALSE(r.ack(agent_id, 2000));
  REQUIRE(pick_ids(2100, 4));
  CHECK(seen.size() == 2);
  CHECK_FALSE(r.drain(static_id, true, 2100));
  REQUIRE(pick_ids(2100, 4));
  CHECK(seen == std::set<std::string>{agent_id});
  CHECK_FALSE(r.remove(agent_id));
  detail::pick_result p;
  CHECK_FALSE(r.pick(2100, "", {}, p));
  CHECK(r.remove(agent_id) == errc::unknown_backend);
  CHECK(r.set_weight("nope", 5) == errc::unknown_backend);
  CHECK(r.set_weight(static_id, 0) == errc::bad_option);
}

TEST_CASE("registry: persistence keeps a client on its backend until it leaves") {
  detail::registry r(algorithm::roundrobin, duration(60000), true, {}, detail::random_id);
  detail::resolved_address a = detail::resolved_address::v4(127, 0, 0, 1, 9);
  std::string ids[3];
  for (auto& id : ids) REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, &id, 0));
  std::map<std::string, std::string> first;
  for (int client = 0; client < 6; ++client) {
    std::string key(1, static_cast<char>(client));
    for (int round = 0; round < 5; ++round) {
      detail::pick_result p;
      REQUIRE(r.pick(0, key, {}, p));
      std::string id = r.id_of(p.chosen);
      r.release(p.chosen, false);
      if (round == 0) first[key] = id;
      CHECK(first[key] == id);
    }
  }
  // Clients spread over all three backends.
  std::set<std::string> used;
  for (auto& e : first) used.insert(e.second);
  CHECK(used.size() == 3);
  // The backend of client 0 leaves: it is placed elsewhere, then stays there.
  std::string gone = first[std::string(1, '\0')];
  REQUIRE_FALSE(r.remove(gone));
  detail::pick_result p;
  REQUIRE(r.pick(0, std::string(1, '\0'), {}, p));
  std::string moved = r.id_of(p.chosen);
  CHECK(moved != gone);
  REQUIRE(r.pick(0, std::string(1, '\0'), {}, p));
  CHECK(r.id_of(p.chosen) == moved);
  // A tried (failed) sticky backend is not chosen again for that connection.
  std::vector<detail::lease> tried{p.chosen};
  detail::pick_result q;
  REQUIRE(r.pick(0, std::string(1, '\0'), tried, q));
  CHECK(r.id_of(q.chosen) != moved);
}

TEST_CASE("registry: the affinity table stays bounded") {
  detail::registry_limits limits;
  limits.affinity_entries = 100;
  limits.affinity_ttl_ms = 1000;
  detail::registry r(algorithm::roundrobin, duration(60000), true, limits, detail::random_id);
  detail::resolved_address a = detail::resolved_address::v4(127, 0, 0, 1, 9);
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, nullptr, 0));
  for (int i = 0; i < 1000; ++i) {
    detail::pick_result p;
    REQUIRE(r.pick(i, std::to_string(i), {}, p));
    r.release(p.chosen, false);
  }
  CHECK(r.affinity_size() <= 100);
}

TEST_CASE("dialect detection from the first bytes") {
  using detail::dialect;
  const std::pair<const char*, dialect> cases[] = {
      {"", dialect::undecided},          {"N", dialect::undecided},       {"NI", dialect::undecided},
      {"NID:", dialect::legacy},         {"ACK:X:", dialect::legacy},     {"CLOSE:", dialect::legacy},
      {":", dialect::legacy},            {"BYE:", dialect::legacy},       {"list\n", dialect::native},
      {"hello harmony/1", dialect::native}, {"LIST", dialect::native},    {"NIX:", dialect::native},
      {"ID ", dialect::native},
  };
  for (const auto& c : cases) {
    INFO("first bytes: \"" << c.first << "\"");
    CHECK(detail::detect_dialect(c.first) == c.second);
  }
}

namespace {
std::vector<std::pair<std::string, std::string>> parse_legacy(const std::string& stream,
                                                              const std::vector<std::size_t>& cuts, bool* ok) {
  detail::legacy_parser p;
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t at = 0;
  *ok = true;
  auto feed = [&](std::string_view piece) {
    *ok = *ok && p.feed(piece, [&](std::string_view c, std::string_view a) { out.emplace_back(c, a); });
  };
  for (std::size_t cut : cuts) {
    feed(std::string_view(stream).substr(at, cut - at));
    at = cut;
  }
  feed(std::string_view(stream).substr(at));
  return out;
}
}  // namespace

TEST_CASE("legacy parser: the same messages however the stream is split") {
  const std::string stream = "NID::BAL:1000:SPORT:11081:::ACK:5F38AB:ID:5F38AB:BYE:CLOSE:5F38AB:";
  const std::vector<std::pair<std::string, std::string>> expected{
      {"NID", ""}, {"BAL", "1000"}, {"SPORT", "11081"}, {"ACK", "5F38AB"}, {"ID", "5F38AB"}, {"BYE", ""},
      {"CLOSE", "5F38AB"}};
  bool ok = false;
  CHECK(parse_legacy(stream, {}, &ok) == expected);
  CHECK(ok);
  std::vector<std::size_t> every;
  for (std::size_t i = 1; i < stream.size(); ++i) every.push_back(i);
  CHECK(parse_legacy(stream, every, &ok) == expected);
  CHECK(ok);
  std::mt19937 gen(11);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < stream.size(); ++i)
      if (gen() % 4 == 0) cuts.push_back(i);
    REQUIRE(parse_legacy(stream, cuts, &ok) == expected);
    REQUIRE(ok);
  }
}

TEST_CASE("legacy parser: unknown commands and oversized tokens are errors") {
  bool ok = true;
  parse_legacy("NID::HELLO:x:", {}, &ok);
  CHECK_FALSE(ok);
  parse_legacy("ACK:" + std::string(300, 'A') + ":", {}, &ok);
  CHECK_FALSE(ok);
  parse_legacy(std::string(300, 'A'), {100, 200}, &ok);  // no ':' at all, still bounded
  CHECK_FALSE(ok);
}

TEST_CASE("admin codec survives random input") {
  std::mt19937 gen(7);
  for (int round = 0; round < 300; ++round) {
    std::string noise(static_cast<std::size_t>(gen() % 2000), '\0');
    for (auto& c : noise) c = static_cast<char>(gen() % 4 == 0 ? ':' : gen() % 256);
    detail::legacy_parser legacy;
    detail::line_splitter lines(512);
    std::size_t messages = 0;
    for (std::size_t at = 0; at < noise.size();) {
      std::size_t n = std::min<std::size_t>(noise.size() - at, gen() % 64 + 1);
      std::string_view piece(noise.data() + at, n);
      if (!legacy.feed(piece, [&](std::string_view, std::string_view a) {
            CHECK(a.size() <= detail::legacy_parser::max_token);
            ++messages;
          }))
        break;
      lines.feed(piece, [&](std::string_view line) {
        CHECK(line.size() <= 512);
        auto c = detail::parse_command(line);
        for (auto a : c.args) CHECK(a.find(' ') == std::string_view::npos);
      });
      at += n;
    }
    CHECK(messages <= noise.size());
  }
}

TEST_CASE("line splitter and command parser") {
  detail::line_splitter lines(16);
  std::vector<std::string> got;
  auto keep = [&](std::string_view l) { got.emplace_back(l); };
  CHECK(lines.feed("li", keep));
  CHECK(lines.feed("st\r\nstats\n\nping", keep));
  CHECK(got == std::vector<std::string>{"list", "stats", ""});
  CHECK(lines.feed("\n", keep));
  CHECK(got.back() == "ping");
  CHECK_FALSE(lines.feed(std::string(17, 'x'), keep));
  auto c = detail::parse_command("  register  port=80 weight=5\tid=AB extra  ");
  CHECK(c.verb == "register");
  CHECK(c.args == std::vector<std::string_view>{"extra"});
  std::string_view v;
  CHECK(c.option("port", v));
  CHECK(v == "80");
  CHECK(c.option("id", v));
  CHECK(v == "AB");
  CHECK_FALSE(c.option("host", v));
  CHECK(detail::legacy_weight("1000") == 1000);
  CHECK(detail::legacy_weight("heavy") == 500);
  CHECK(detail::legacy_weight("0") == 500);
  CHECK(detail::legacy_weight("") == 500);
  CHECK(detail::legacy_weight("99999999999") == 500);
}

// ============================================================================
// Policy as plain types (issue #9): the resolved address, the affinity table,
// the wait queue, the registry without sockets, and the admin command handler
// for both dialects, all without a socket.
// ============================================================================

TEST_CASE("resolved address: plain bytes, converted to the OS form and back unchanged") {
  auto v4 = detail::resolved_address::v4(10, 1, 2, 3, 8080);
  CHECK(v4.valid());
  CHECK(v4.host_key() == std::string("\x0a\x01\x02\x03", 4));
  CHECK(v4.with_port(80).port == 80);
  CHECK(v4.with_port(80).host_key() == v4.host_key());
  CHECK(v4 != v4.with_port(80));
  CHECK(detail::to_resolved(detail::to_os_address(v4)) == v4);
  CHECK(detail::to_os_address(v4).to_endpoint().to_string() == "10.1.2.3:8080");
  detail::resolved_address v6;
  v6.family = detail::ip_family::v6;
  v6.bytes[15] = 1;
  v6.port = 443;
  CHECK(v6.host_key().size() == 16);
  CHECK(detail::to_resolved(detail::to_os_address(v6)) == v6);
  CHECK(detail::to_os_address(v6).to_endpoint().to_string() == "[::1]:443");
  CHECK_FALSE(detail::resolved_address{}.valid());
  CHECK(detail::resolved_address{}.host_key().empty());
  CHECK(detail::to_os_address(detail::resolved_address{}).length == 0);
}

TEST_CASE("affinity table: remembers, expires after the idle TTL, and prunes") {
  detail::affinity_table t({/*entries*/ 4, /*ttl_ms*/ 100});
  CHECK(t.find("a", 0) == nullptr);
  t.remember("a", detail::lease{1, 7}, 0);
  REQUIRE(t.find("a", 50) != nullptr);
  CHECK(*t.find("a", 50) == detail::lease{1, 7});
  CHECK(t.find("a", 100) != nullptr);  // exactly the TTL idle: still there
  CHECK(t.find("a", 101) == nullptr);  // longer: expired, even before a prune
  t.remember("a", detail::lease{2, 0}, 90);  // use refreshes the entry and may change its backend
  CHECK(*t.find("a", 150) == detail::lease{2, 0});
  CHECK(t.size() == 1);
  t.remember("b", detail::lease{3, 0}, 95);
  CHECK(t.prune(192) == 1);  // "a" (used at 90) is idle 102 ms, "b" (95) only 97
  CHECK(t.size() == 1);
  CHECK(t.find("b", 195) != nullptr);
  CHECK(t.prune(196) == 1);
  CHECK(t.size() == 0);
  CHECK_FALSE(t.forget("b"));
  t.remember("b", detail::lease{3, 0}, 300);
  CHECK(t.forget("b"));
  CHECK(t.size() == 0);
}

TEST_CASE("affinity table: a full table makes room, oldest half first when nothing expired") {
  detail::affinity_table t({/*entries*/ 10, /*ttl_ms*/ 1000000});
  for (int i = 0; i < 10; ++i) t.remember(std::to_string(i), detail::lease{static_cast<std::uint32_t>(i), 0}, i);
  CHECK(t.size() == 10);
  t.remember("new", detail::lease{99, 0}, 100);  // full: the older half and the median (0..5) go
  CHECK(t.size() == 5);
  for (int i = 0; i < 6; ++i) CHECK(t.find(std::to_string(i), 100) == nullptr);
  for (int i = 6; i < 10; ++i) CHECK(t.find(std::to_string(i), 100) != nullptr);
  CHECK(t.find("new", 100) != nullptr);
  // Re-remembering a present key never prunes.
  for (int i = 0; i < 5; ++i) t.remember("x" + std::to_string(i), detail::lease{0, 0}, 101);
  CHECK(t.size() == 10);
  t.remember("6", detail::lease{1, 1}, 102);
  CHECK(t.size() == 10);
  CHECK(*t.find("6", 102) == detail::lease{1, 1});
  // Expired entries go first: only they, when that makes room.
  detail::affinity_table u({/*entries*/ 4, /*ttl_ms*/ 10});
  u.remember("old1", {}, 0);
  u.remember("old2", {}, 0);
  u.remember("new1", {}, 15);
  u.remember("new2", {}, 15);
  u.remember("new3", {}, 20);
  CHECK(u.size() == 3);
  CHECK(u.find("old1", 20) == nullptr);
  CHECK(u.find("new1", 20) != nullptr);
  // However many clients come, the table stays bounded.
  detail::affinity_table w({/*entries*/ 100, /*ttl_ms*/ 1000000});
  for (int i = 0; i < 10000; ++i) {
    w.remember(std::to_string(i), {}, i);
    REQUIRE(w.size() <= 100);
  }
  CHECK(w.bounds().entries == 100);
}

namespace {
struct waiter {
  int n = 0;
  detail::wait_hook<waiter> hook;
};
using waiter_queue = detail::wait_queue<waiter, &waiter::hook>;
}  // namespace

TEST_CASE("wait queue: FIFO, removal from anywhere, length") {
  waiter w[5];
  for (int i = 0; i < 5; ++i) w[i].n = i;
  waiter_queue q;
  CHECK(q.empty());
  CHECK(q.pop() == nullptr);
  CHECK(q.oldest() == nullptr);
  for (int i = 0; i < 5; ++i) CHECK(q.push(&w[i], 100 + i));
  CHECK(q.size() == 5);
  CHECK_FALSE(q.push(&w[2], 200));  // already waiting: no change
  CHECK(q.size() == 5);
  CHECK(q.oldest() == &w[0]);
  CHECK(q.oldest_since() == 100);
  CHECK(waiter_queue::contains(&w[2]));
  CHECK(q.remove(&w[2]));  // the middle
  CHECK_FALSE(waiter_queue::contains(&w[2]));
  CHECK_FALSE(q.remove(&w[2]));
  CHECK(q.remove(&w[4]));  // the tail
  CHECK(q.remove(&w[0]));  // the head
  CHECK(q.size() == 2);
  CHECK(q.oldest_since() == 101);
  CHECK(q.pop() == &w[1]);
  CHECK(q.push(&w[0], 300));  // rejoins at the back
  CHECK(q.pop() == &w[3]);
  CHECK(q.pop() == &w[0]);
  CHECK(q.pop() == nullptr);
  CHECK(q.empty());
  CHECK(q.push(&w[4], 400));  // after emptying, the links start afresh
  CHECK(q.oldest() == &w[4]);
  CHECK(q.pop() == &w[4]);
}

TEST_CASE("wait queue: agrees with a model under random operations") {
  std::vector<waiter> pool(64);
  for (std::size_t i = 0; i < pool.size(); ++i) pool[i].n = static_cast<int>(i);
  waiter_queue q;
  std::deque<waiter*> model;
  std::mt19937 gen(5);
  for (int step = 0; step < 20000; ++step) {
    waiter* x = &pool[gen() % pool.size()];
    bool in_model = std::find(model.begin(), model.end(), x) != model.end();
    switch (gen() % 3) {
      case 0:
        REQUIRE(q.push(x, step) == !in_model);
        if (!in_model) model.push_back(x);
        break;
      case 1:
        REQUIRE(q.remove(x) == in_model);
        if (in_model) model.erase(std::find(model.begin(), model.end(), x));
        break;
      default: {
        waiter* got = q.pop();
        REQUIRE(got == (model.empty() ? nullptr : model.front()));
        if (!model.empty()) model.pop_front();
      }
    }
    REQUIRE(q.size() == model.size());
    REQUIRE(q.oldest() == (model.empty() ? nullptr : model.front()));
  }
}

namespace {
// Ids 000…001, 000…002, … in place of the OS random source.
detail::id_generator counting_ids(std::uint64_t start = 1) {
  auto next = std::make_shared<std::uint64_t>(start);
  return [next] {
    static const char digits[] = "0123456789ABCDEF";
    std::string id(32, '0');
    std::uint64_t v = (*next)++;
    for (int i = 31; v; --i, v >>= 4) id[static_cast<std::size_t>(i)] = digits[v & 15];
    return id;
  };
}
std::string nth_id(std::uint64_t n) { return counting_ids(n)(); }
}  // namespace

TEST_CASE("registry without sockets: injected ids, the one weight range, leases, states") {
  detail::registry_limits limits;
  limits.backends = 3;
  detail::registry r(algorithm::roundrobin, duration(1000), false, limits, counting_ids());
  auto at = detail::resolved_address::v4(192, 0, 2, 1, 80);
  std::string id;
  REQUIRE_FALSE(r.add(endpoint{"192.0.2.1", 80}, &at, 500, true, &id, 0));
  CHECK(id == nth_id(1));
  // Weights: [min_weight, max_weight], the same for add and set_weight.
  CHECK(r.add(endpoint{"192.0.2.1", 80}, &at, 0, false, nullptr, 0) == errc::bad_option);
  CHECK(r.add(endpoint{"192.0.2.1", 80}, &at, max_weight + 1, false, nullptr, 0) == errc::bad_option);
  CHECK_FALSE(r.set_weight(id, max_weight));
  CHECK(r.set_weight(id, max_weight + 1) == errc::bad_option);
  CHECK(r.set_weight(id, min_weight - 1) == errc::bad_option);
  CHECK_FALSE(r.set_weight(id, min_weight));
  CHECK(r.list(0).at(0).weight == min_weight);
  // A wanted id is kept when it is well formed and free.
  std::string wanted = "0123456789ABCDEF0123456789ABCDEF", got;
  REQUIRE_FALSE(r.add(endpoint{"192.0.2.2", 0}, &at, 500, true, &got, 0, wanted));
  CHECK(got == wanted);
  REQUIRE_FALSE(r.add(endpoint{"192.0.2.3", 0}, &at, 500, true, &got, 0, wanted));  // taken: a fresh one
  CHECK(got == nth_id(2));
  CHECK(r.add(endpoint{"192.0.2.4", 80}, &at, 500, true, nullptr, 0) == errc::too_many_backends);
  CHECK(r.size() == 3);
  // The states a listing shows.
  auto state = [&](const std::string& which, std::int64_t now) {
    for (auto& b : r.list(now))
      if (b.id == which) return b.state;
    return std::string("gone");
  };
  CHECK(state(id, 0) == "up");
  CHECK(state(wanted, 0) == "no-port");
  CHECK(state(id, 1001) == "expired");
  CHECK_FALSE(r.ack(id, 1001));
  CHECK(state(id, 1001) == "up");
  CHECK_FALSE(r.drain(id, true, 1001));
  CHECK(state(id, 1001) == "draining");
  CHECK_FALSE(r.drain(id, false, 1001));
  CHECK_FALSE(r.set_online(id, false, 1001));
  CHECK(state(id, 1001) == "offline");
  CHECK_FALSE(r.set_online(id, true, 1500));  // counts as an ack
  CHECK(state(id, 2400) == "up");
  // A pick hands out the stored address and a lease; a stale lease is harmless.
  detail::pick_result p;
  REQUIRE(r.pick(2400, "", {}, p));
  CHECK(p.to == at);
  CHECK(r.id_of(p.chosen) == id);
  CHECK(r.list(2400).at(0).active == 1);
  REQUIRE_FALSE(r.remove(id));
  CHECK(r.id_of(p.chosen).empty());
  r.release(p.chosen, true);  // the slot's old generation: no effect
  std::string again;
  REQUIRE_FALSE(r.add(endpoint{"192.0.2.9", 81}, &at, 500, false, &again, 2400));  // reuses the slot
  CHECK(r.id_of(p.chosen).empty());
  for (auto& b : r.list(2400))
    if (b.id == again) CHECK((b.active == 0 && b.failures == 0));
  // set_address makes a backend routable once it has a port.
  REQUIRE_FALSE(r.set_address(wanted, endpoint{"192.0.2.2", 8080}, at.with_port(8080), 2400));
  CHECK(state(wanted, 2400) == "expired");  // registered at 0, never acked since
  REQUIRE_FALSE(r.ack(wanted, 2400));
  CHECK(state(wanted, 2400) == "up");
  endpoint where;
  CHECK(r.address_of(wanted, where));
  CHECK(where.to_string() == "192.0.2.2:8080");
  CHECK_FALSE(r.address_of("nope", where));
  CHECK(r.known(wanted));
  CHECK_FALSE(r.known("nope"));
}

TEST_CASE("registry: a generator that repeats itself fails the add instead of hanging") {
  detail::registry r(algorithm::leastconn, duration(1000), false, {}, [] { return std::string(32, 'A'); });
  auto at = detail::resolved_address::v4(127, 0, 0, 1, 80);
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 80}, &at, 500, false, nullptr, 0));
  CHECK(r.add(endpoint{"127.0.0.1", 80}, &at, 500, false, nullptr, 0));
  detail::registry none(algorithm::leastconn, duration(1000), false, {}, nullptr);
  CHECK(none.add(endpoint{"127.0.0.1", 80}, &at, 500, false, nullptr, 0));
}

TEST_CASE("registry: persistence uses the affinity table and honours its idle TTL") {
  detail::registry_limits limits;
  limits.affinity_ttl_ms = 100;
  detail::registry r(algorithm::roundrobin, duration(1000000), true, limits, counting_ids());
  auto at = detail::resolved_address::v4(127, 0, 0, 1, 80);
  for (int i = 0; i < 2; ++i) REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 80}, &at, 500, false, nullptr, 0));
  detail::pick_result p;
  REQUIRE(r.pick(0, "client", {}, p));
  std::string first = r.id_of(p.chosen);
  r.release(p.chosen, false);
  REQUIRE(r.pick(50, "client", {}, p));  // round-robin alone would alternate
  CHECK(r.id_of(p.chosen) == first);
  r.release(p.chosen, false);
  REQUIRE(r.pick(150, "client", {}, p));  // idle exactly the TTL: still sticky, and refreshed
  CHECK(r.id_of(p.chosen) == first);
  r.release(p.chosen, false);
  CHECK(r.affinity_size() == 1);
  // Idle past the TTL: placed afresh by the selector, whose turn is the other backend.
  REQUIRE(r.pick(251, "client", {}, p));
  CHECK(r.id_of(p.chosen) != first);
  CHECK(r.affinity_size() == 1);
}

TEST_CASE("locked registry: loops on several threads pick and release safely") {
  detail::locked<detail::registry> shared(algorithm::leastconn, duration(60000), true, detail::registry_limits{},
                                          counting_ids());
  auto at = detail::resolved_address::v4(127, 0, 0, 1, 80);
  for (int i = 0; i < 3; ++i) REQUIRE_FALSE(shared.lock()->add(endpoint{"127.0.0.1", 80}, &at, 500, false, nullptr, 0));
  std::vector<std::thread> threads;
  std::atomic<int> picked{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        detail::pick_result p;
        if (shared.lock()->pick(i, std::to_string(t * 100 + i % 50), {}, p)) {
          ++picked;
          shared.lock()->release(p.chosen, false);
        }
      }
    });
  for (auto& th : threads) th.join();
  CHECK(picked == 8000);
  for (auto& b : shared.lock()->list(0)) CHECK(b.active == 0);
}
