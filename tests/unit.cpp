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

TEST_CASE("leastconn: idle backends split by weight, one over its share is avoided") {
  detail::selector s(algorithm::leastconn);
  s.insert(0, 1000, 0);
  s.insert(1, 500, 0);
  auto counts = picks(s, 300);
  CHECK(counts[0] == 200);
  CHECK(counts[1] == 100);
  // With load: slot 0 (first by pass) has 6 of 6 open, over its share of 7 by more
  // than one (5 * 1500 >= 7 * 1000): the less loaded slot 1 is taken.
  s.set_active(0, 6);
  s.set_active(1, 0);
  auto slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
  CHECK(slot == 1);
  // 4 of 5: within one connection of its share (3 * 1500 < 6 * 1000), it is taken.
  s.set_active(0, 4);
  s.set_active(1, 1);
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

TEST_CASE("replay window: open until the backend answers or the request outgrows the buffer") {
  detail::replay_window w;
  CHECK(w.is_open());
  CHECK(w.keep(10, 16));                  // room left: the sent bytes stay for a replay
  CHECK(w.may_replay(0, false));          // nothing from the backend yet: another may serve
  CHECK_FALSE(w.may_replay(0, true));     // the backend finished: its answer (empty) stands
  CHECK_FALSE(w.may_replay(1, false));    // one byte of answer: the client may have seen it
  CHECK_FALSE(w.keep(16, 16));            // a full buffer cannot be kept whole while more come
  CHECK_FALSE(w.is_open());
  CHECK_FALSE(w.keep(1, 16));             // closed for good
  CHECK_FALSE(w.may_replay(0, false));
  w.reset();                              // a new attempt, or a new client
  CHECK(w.may_replay(0, false));
  w.backend_answered();
  CHECK_FALSE(w.is_open());
  CHECK_FALSE(w.keep(0, 16));
}

TEST_CASE("weights: one range, parsed in one place") {
  int w = 0;
  CHECK_FALSE(parse_weight("1", w));
  CHECK(w == min_weight);
  CHECK_FALSE(parse_weight(std::to_string(max_weight), w));
  CHECK(w == max_weight);
  for (const char* bad : {"0", "", "-1", "1.5", "heavy", "1048577", "99999999999999999999999"})
    CHECK_MESSAGE(parse_weight(bad, w) == errc::bad_option, bad);
  CHECK(default_weight >= min_weight);
  CHECK(default_weight <= max_weight);
}

// ============================================================================
// Weights that hold (leastconn between stride order and load), short-term
// fairness, slow start. Sans-IO: connections are simulated by set_active.
// ============================================================================
namespace {
using verdict = detail::selector::verdict;
auto take_all = [](std::uint32_t) { return verdict::take; };

// Sequential connections whose teardown overlaps the next ones: connection i is
// released only after pick i + overlap. Returns the picks per slot.
std::map<std::uint32_t, int> overlapping_picks(detail::selector& s, int n, int overlap) {
  std::map<std::uint32_t, int> counts, active;
  std::vector<std::uint32_t> open;
  for (int i = 0; i < n; ++i) {
    auto slot = s.pick(take_all);
    REQUIRE(slot != detail::selector::npos);
    ++counts[slot];
    s.set_active(slot, ++active[slot]);
    open.push_back(slot);
    if (static_cast<int>(open.size()) > overlap) {
      std::uint32_t done = open.front();
      open.erase(open.begin());
      s.set_active(done, --active[done]);
    }
  }
  return counts;
}

// The longest run of one slot among `n` sequential picks (each released at once).
int longest_run(detail::selector& s, int n, std::map<std::uint32_t, int>& counts) {
  int run = 0, longest = 0;
  std::uint32_t last = detail::selector::npos;
  for (int i = 0; i < n; ++i) {
    auto slot = s.pick(take_all);
    REQUIRE(slot != detail::selector::npos);
    ++counts[slot];
    run = slot == last ? run + 1 : 1;
    last = slot;
    longest = std::max(longest, run);
  }
  return longest;
}

detail::id_generator weights_ids() {
  auto n = std::make_shared<int>(0);
  return [n] {
    char hex[33];
    std::snprintf(hex, sizeof hex, "%032X", ++*n);
    return std::string(hex);
  };
}
}  // namespace

TEST_CASE("leastconn: weights hold when each connection ends only after the next ones start") {
  for (int overlap : {1, 2, 3}) {
    CAPTURE(overlap);
    detail::selector s(algorithm::leastconn);
    s.insert(0, 1000, 0);
    s.insert(1, 500, 0);
    auto counts = overlapping_picks(s, 300, overlap);
    CHECK(counts[0] == 200);
    CHECK(counts[1] == 100);
  }
  // Three backends, a deeper overlap: still exactly by weight.
  detail::selector t(algorithm::leastconn);
  t.insert(0, 1000, 0);
  t.insert(1, 500, 0);
  t.insert(2, 500, 0);
  auto counts = overlapping_picks(t, 400, 4);
  CHECK(counts[0] == 200);
  CHECK(counts[1] == 100);
  CHECK(counts[2] == 100);
}

namespace {
// Slot 0's connections never end; slot 1's end after the next pick. Picks per slot.
std::map<std::uint32_t, int> one_never_ends(int weight0, int weight1, int n) {
  detail::selector s(algorithm::leastconn);
  s.insert(0, weight0, 0);
  s.insert(1, weight1, 0);
  int stuck = 0, fast_open = 0;
  std::map<std::uint32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    auto slot = s.pick(take_all);
    ++counts[slot];
    if (fast_open > 0) s.set_active(1, --fast_open);
    if (slot == 0) s.set_active(0, ++stuck);
    else s.set_active(1, ++fast_open);
  }
  return counts;
}
}  // namespace

TEST_CASE("leastconn: a backend whose connections never end gets fewer") {
  // Equal weights: over its share by a whole connection at 4 open (3 * 1000 >=
  // (4 + 1 + 1) * 500), it keeps those 4 and gets no more.
  auto counts = one_never_ends(500, 500, 200);
  CHECK(counts[0] == 4);
  CHECK(counts[1] == 196);
  // A heavier backend may hold proportionally more before it is passed over.
  counts = one_never_ends(1000, 500, 200);
  CHECK(counts[0] > 4);
  CHECK(counts[0] <= 8);
}

TEST_CASE("leastconn: 16 parallel clients give a slow backend clearly less") {
  // Discrete time: a connection to slot 0 lasts 30 steps, to slot 1 one step;
  // each of 16 clients connects again as soon as its connection ends.
  detail::selector s(algorithm::leastconn);
  s.insert(0, 500, 0);
  s.insert(1, 500, 0);
  std::vector<std::pair<int, std::uint32_t>> open;  // (step it ends, slot)
  int active[2] = {0, 0};
  std::map<std::uint32_t, int> counts;
  for (int step = 0; step < 300; ++step) {
    for (std::size_t i = 0; i < open.size();) {
      if (open[i].first > step) {
        ++i;
        continue;
      }
      std::uint32_t slot = open[i].second;
      s.set_active(slot, --active[slot]);
      open[i] = open.back();
      open.pop_back();
    }
    while (open.size() < 16) {
      auto slot = s.pick(take_all);
      ++counts[slot];
      s.set_active(slot, ++active[slot]);
      open.emplace_back(step + (slot == 0 ? 30 : 1), slot);
    }
  }
  CHECK(counts[0] * 20 < counts[1]);
  CHECK(counts[0] > 0);  // passed over, not shut out
}

TEST_CASE("leastconn: one over its share is passed over for the least loaded") {
  detail::selector s(algorithm::leastconn);
  s.insert(0, 1000, 0);
  s.insert(1, 500, 0);
  s.insert(2, 500, 0);
  // Slot 0 first by pass, 2 open: 1 * 2000 >= (3 + 1) * 1000 is false: taken.
  s.set_active(0, 2);
  s.set_active(2, 1);
  CHECK(s.pick(take_all) == 0);
  // Slot 1 next by pass with 3 open of 6: 2 * 2000 >= 7 * 500, over: the least
  // loaded (slot 2, 1 open per 500) is taken instead.
  s.set_active(0, 2);
  s.set_active(1, 3);
  s.set_active(2, 1);
  CHECK(s.pick(take_all) == 2);
  // A slot judged skip or evict is never the fallback either.
  auto slot = s.pick([](std::uint32_t x) { return x == 2 ? verdict::skip : verdict::take; });
  CHECK(slot == 0);
  // roundrobin ignores load.
  detail::selector r(algorithm::roundrobin);
  r.insert(0, 500, 10);
  r.insert(1, 500, 0);
  CHECK(r.pick(take_all) == 0);
}

TEST_CASE("short-term fairness: after a skewed burst no backend gets a run of picks") {
  // A burst during which slot 1 was over its share: the picks went to slot 0.
  detail::selector s(algorithm::leastconn);
  s.insert(0, 500, 0);
  s.insert(1, 500, 0);
  s.set_active(1, 10);
  auto burst = picks(s, 40);
  CHECK(burst[0] == 40);
  s.set_active(1, 0);
  // Slot 1 lags by 20 strides but comes back within one stride of now: the next
  // 20 sequential picks alternate instead of going 19:1 to it.
  CHECK(s.lead(1) < -1);
  std::map<std::uint32_t, int> counts;
  CHECK(longest_run(s, 20, counts) <= 2);
  CHECK(counts[0] >= 9);
  CHECK(counts[1] >= 9);
  CHECK(s.lead(0) >= -1);
  CHECK(s.lead(1) >= -1);

  // The same when the judge skipped a backend for a while (retries elsewhere).
  detail::selector t(algorithm::roundrobin);
  t.insert(0, 1000, 0);
  t.insert(1, 500, 0);
  t.insert(2, 500, 0);
  for (int i = 0; i < 60; ++i)
    CHECK(t.pick([](std::uint32_t x) { return x == 2 ? verdict::skip : verdict::take; }) != 2);
  counts.clear();
  CHECK(longest_run(t, 40, counts) <= 2);
  CHECK(counts[0] >= 19);
  CHECK(counts[0] <= 21);
  CHECK(counts[2] >= 9);
  CHECK(counts[2] <= 11);
  // Every slot taken since sits within one stride of now.
  for (std::uint32_t x = 0; x < 3; ++x) CHECK(t.lead(x) >= -1);
}

TEST_CASE("slow start: a backend that joins or comes back ramps its weight up over the duration") {
  auto run = [](std::int64_t slow_start) {
    detail::registry_limits limits;
    detail::registry r(algorithm::leastconn, duration(60000), false, limits, weights_ids());
    r.set_slow_start(slow_start);
    auto at = detail::resolved_address::v4(192, 0, 2, 1, 80);
    std::string old_id, fresh_id;
    REQUIRE_FALSE(r.add(endpoint{"192.0.2.1", 80}, &at, 500, false, &old_id, 0));
    // Past the old backend's own ramp, the fresh one joins at 10 s.
    std::vector<detail::lease> none;
    detail::pick_result p;
    REQUIRE(r.pick(slow_start + 1, {}, none, p));
    r.release(p.chosen, false);
    REQUIRE_FALSE(r.add(endpoint{"192.0.2.2", 80}, &at, 500, false, &fresh_id, 10000));
    // The fresh backend's share of 320 sequential picks at a moment `t` ms after it joined.
    auto share_at = [&](std::int64_t t) {
      int fresh = 0;
      for (int i = 0; i < 320; ++i) {
        REQUIRE(r.pick(10000 + t, {}, none, p));
        if (r.id_of(p.chosen) == fresh_id) ++fresh;
        r.release(p.chosen, false);
      }
      return fresh;
    };
    std::vector<int> shares;
    for (std::int64_t t : {0, 500, 1000, 1600, 5000}) shares.push_back(share_at(t));
    // Drained and back: the ramp starts again.
    REQUIRE_FALSE(r.drain(fresh_id, true, 20000));
    REQUIRE_FALSE(r.drain(fresh_id, false, 20000));
    shares.push_back(share_at(10000));
    return shares;
  };
  // Over 1600 ms: 1/16 at first (31 against 500: 19 of 320), 5/16 at 500 ms (156:
  // 76), 10/16 at 1 s (312: 123), the whole weight from 1.6 s on (160).
  auto ramped = run(1600);
  CAPTURE(ramped[0]);
  CAPTURE(ramped[1]);
  CAPTURE(ramped[2]);
  CHECK(ramped[0] >= 17);
  CHECK(ramped[0] <= 22);
  CHECK(ramped[1] >= 73);
  CHECK(ramped[1] <= 79);
  CHECK(ramped[2] >= 120);
  CHECK(ramped[2] <= 126);
  CHECK(ramped[3] >= 158);
  CHECK(ramped[3] <= 162);
  CHECK(ramped[4] >= 159);
  CHECK(ramped[4] <= 161);
  CHECK(ramped[5] >= 17);
  CHECK(ramped[5] <= 22);
  // Off: the whole weight at once.
  auto off = run(0);
  for (int share : off) CHECK(share == 160);
}

TEST_CASE("slow start: one option, checked with the others") {
  server_options o;
  CHECK(o.slow_start == duration(0));
  CHECK_FALSE(check(o));
  o.slow_start = max_slow_start;
  CHECK_FALSE(check(o));
  option_problem problem;
  o.slow_start = max_slow_start + duration(1);
  CHECK(check(o, &problem) == errc::bad_option);
  CHECK(std::string(problem.option) == "slow_start");
  o.slow_start = duration(-1);
  CHECK(check(o) == errc::bad_option);
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

namespace {
// The admin command handler on a registry of its own, with plain-value services.
struct admin_bench final : detail::admin_services {
  detail::locked<detail::registry> backends;
  detail::logger log;  // silent
  std::int64_t now = 1000;
  server_stats counters;
  int limit = -1;
  std::vector<std::string> resolved;  // hosts asked for

  explicit admin_bench(detail::registry_limits limits = {})
      : backends(algorithm::roundrobin, duration(60000), false, limits, counting_ids()) {}

  server_stats stats() override { return counters; }
  int concurrency() override { return limit; }
  std::error_code resolve(const endpoint& at, detail::resolved_address& out) override {
    resolved.push_back(at.host);
    if (at.host == "unresolvable") return make_error_code(errc::resolve_failed);
    out = detail::resolved_address::v4(198, 51, 100, 7, at.port);
    return {};
  }
  std::error_code add_static(std::string_view address, int weight, std::string* id_out) override {
    endpoint at;
    if (auto e = parse_endpoint(address, at)) return e;
    if (at.port == 0) return make_error_code(errc::bad_option);
    auto to = detail::resolved_address::v4(198, 51, 100, 8, at.port);
    return backends.lock()->add(at, &to, weight, false, id_out, now);
  }

  detail::admin_result feed(detail::admin_protocol& p, std::string_view bytes) {
    detail::admin_context ctx{backends, *this, log, now};
    return p.feed(bytes, ctx);
  }
  std::string say(detail::admin_protocol& p, std::string_view bytes) { return feed(p, bytes).text(); }
  std::vector<backend_info> list() { return backends.lock()->list(now); }
};

// A connection from 203.0.113.5:40000 (the agent's own admin connection).
detail::admin_protocol from_agent(detail::admin_protocol::config c = {}) {
  return detail::admin_protocol(detail::resolved_address::v4(203, 0, 113, 5, 40000), "203.0.113.5", c);
}

bool has_effect(const detail::admin_result& r, detail::admin_effect::kind k) {
  for (auto& e : r.effects)
    if (e.what == k) return true;
  return false;
}
const detail::admin_effect* only_effect(const detail::admin_result& r) {
  return r.effects.size() == 1 ? &r.effects[0] : nullptr;
}
}  // namespace

TEST_CASE("legacy commands: the harmony.js register cycle, echoed byte for byte, however it is split") {
  const std::string request = "NID::BAL:1000:SPORT:11081:";
  const std::string id = nth_id(1);
  for (std::size_t piece : {request.size(), std::size_t(1), std::size_t(3), std::size_t(7)}) {
    CAPTURE(piece);
    admin_bench bench;
    auto p = from_agent();
    std::vector<std::string> replies;
    for (std::size_t at = 0; at < request.size(); at += piece) {
      auto r = bench.feed(p, std::string_view(request).substr(at, piece));
      CHECK(r.effects.empty());
      replies.insert(replies.end(), r.replies.begin(), r.replies.end());
    }
    // One write per message answered, as harmony.js's server wrote them.
    CHECK(replies == std::vector<std::string>{"NID:" + id + ":", "BAL:1000:", "SPORT:11081:"});
    CHECK(p.current_dialect() == detail::dialect::legacy);
    CHECK(p.bound_id() == id);
    CHECK_FALSE(p.agent());
    auto list = bench.list();
    REQUIRE(list.size() == 1);
    CHECK(list[0].id == id);
    CHECK(list[0].address.to_string() == "203.0.113.5:11081");  // the peer's host, the agent's port
    CHECK(list[0].weight == 1000);
    CHECK(list[0].state == "up");
    detail::pick_result pick;
    REQUIRE(bench.backends.lock()->pick(bench.now, "", {}, pick));
    CHECK(pick.to == detail::resolved_address::v4(203, 0, 113, 5, 11081));
    // BYE: no reply, a graceful end, and nothing more is read.
    auto bye = bench.feed(p, "BYE:ACK:" + id + ":");
    CHECK(bye.replies.empty());
    REQUIRE(only_effect(bye));
    CHECK(bye.effects[0].what == detail::admin_effect::kind::end);
    CHECK(bye.effects[0].graceful);
    CHECK(std::string(bye.effects[0].why) == "BYE");
    CHECK(p.ended());
    CHECK(bench.feed(p, "ACK:" + id + ":").replies.empty());
  }
}

TEST_CASE("legacy commands: the ack cycle, unknown ids, BID, and a backend without a port") {
  admin_bench bench;
  auto first = from_agent();
  bench.say(first, "NID::");
  const std::string id = nth_id(1);
  CHECK(bench.list().at(0).state == "no-port");  // registered, no SPORT yet
  bench.say(first, "SPORT:9000:");
  bench.now += 60001;  // past the host timeout
  CHECK(bench.list().at(0).state == "expired");
  auto again = from_agent();
  auto r = bench.feed(again, "ACK:" + id + ":ID:" + id + ":");
  CHECK(r.replies == std::vector<std::string>{"ACK:" + id + ":", "ID:" + id + ":"});
  CHECK(r.effects.empty());
  CHECK(again.bound_id() == id);
  CHECK(bench.list().at(0).state == "up");
  // An unknown id: ACK echoed and ignored, ID answered with BID, nothing bound.
  const std::string stranger = nth_id(99);
  auto lost = from_agent();
  CHECK(bench.say(lost, "ACK:" + stranger + ":ID:" + stranger + ":") ==
        "ACK:" + stranger + ":BID:" + stranger + ":");
  CHECK(lost.bound_id().empty());
  // Unbound BAL and SPORT are echoed and change nothing.
  CHECK(bench.say(lost, "BAL:900:SPORT:1:") == "BAL:900:SPORT:1:");
  CHECK(bench.list().size() == 1);
  CHECK(bench.list().at(0).weight == 500);
  // Empty tokens between messages are skipped, also first (":" opens the dialect).
  auto colon = from_agent();
  CHECK(bench.say(colon, "::ACK:" + id + ":::") == "ACK:" + id + ":");
  CHECK(colon.current_dialect() == detail::dialect::legacy);
}

TEST_CASE("legacy commands: BAL keeps harmony.js's echo and its 500 for anything but a weight") {
  const std::pair<const char*, int> cases[] = {
      {"1000", 1000}, {"1", 1}, {"1048576", max_weight}, {"heavy", 500}, {"0", 500},
      {"", 500},      {"12abc", 500}, {"-5", 500},       {"1048577", 500}, {"99999999999999999999999", 500},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    admin_bench bench;
    auto p = from_agent();
    bench.say(p, "NID::");
    std::string bal = std::string("BAL:") + c.first + ":";
    CHECK(bench.say(p, bal) == bal);
    CHECK(bench.list().at(0).weight == c.second);
  }
}

TEST_CASE("legacy commands: SPORT sets the port only for a number up to 65535, and counts as an ack") {
  admin_bench bench;
  auto p = from_agent();
  bench.say(p, "NID::");
  for (const char* bad : {"http", "65536", "", "-1"}) {
    std::string sport = std::string("SPORT:") + bad + ":";
    CHECK(bench.say(p, sport) == sport);
    CHECK(bench.list().at(0).state == "no-port");
  }
  bench.now += 50000;
  CHECK(bench.say(p, "SPORT:65535:") == "SPORT:65535:");
  bench.now += 50000;  // 100 s after NID, 50 s after SPORT: within the host timeout
  CHECK(bench.list().at(0).address.to_string() == "203.0.113.5:65535");
  CHECK(bench.list().at(0).state == "up");
}

TEST_CASE("legacy commands: close() sends CLOSE then ID, and both are echoed") {
  admin_bench bench;
  auto reg = from_agent();
  bench.say(reg, "NID::BAL:1000:SPORT:11081:");
  const std::string id = nth_id(1);
  auto p = from_agent();
  auto r = bench.feed(p, "CLOSE:" + id + ":ID:" + id + ":");
  CHECK(r.replies == std::vector<std::string>{"CLOSE:" + id + ":", "ID:" + id + ":"});
  CHECK(r.effects.empty());  // the agent leaves the connection open: the idle timeout ends it
  CHECK(bench.list().empty());
  CHECK(p.closed_id() == id);
  CHECK(p.bound_id().empty());
  // On the connection that registered it, CLOSE unbinds it too.
  admin_bench b2;
  auto q = from_agent();
  b2.say(q, "NID::");
  CHECK(b2.say(q, "CLOSE:" + id + ":") == "CLOSE:" + id + ":");
  CHECK(q.bound_id().empty());
  CHECK(b2.say(q, "BAL:7:") == "BAL:7:");  // nothing bound any more
  // CLOSE of an unknown id is echoed and remembers nothing.
  auto u = from_agent();
  CHECK(b2.say(u, "CLOSE:" + nth_id(5) + ":") == "CLOSE:" + nth_id(5) + ":");
  CHECK(u.closed_id().empty());
  CHECK(b2.say(u, "ID:" + nth_id(5) + ":") == "BID:" + nth_id(5) + ":");
}

TEST_CASE("legacy commands: refusals and malformed input end the connection") {
  // The backend limit: no reply, an immediate end.
  detail::registry_limits one;
  one.backends = 1;
  admin_bench bench(one);
  auto a = from_agent();
  bench.say(a, "NID::");
  auto b = from_agent();
  auto r = bench.feed(b, "NID::BAL:5:");
  CHECK(r.replies.empty());
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].what == detail::admin_effect::kind::end);
  CHECK_FALSE(r.effects[0].graceful);
  CHECK(std::string(r.effects[0].why) == "registration refused");
  // An unknown command after a good one: the good one is answered, then the end.
  auto c = from_agent();
  r = bench.feed(c, "ACK:X:HELLO:there:");
  CHECK(r.replies == std::vector<std::string>{"ACK:X:"});
  REQUIRE(only_effect(r));
  CHECK(std::string(r.effects[0].why) == "malformed legacy message");
  CHECK_FALSE(r.effects[0].graceful);
  // An oversized token.
  auto d = from_agent();
  r = bench.feed(d, "ACK:" + std::string(300, 'A'));
  REQUIRE(only_effect(r));
  CHECK(std::string(r.effects[0].why) == "malformed legacy message");
  // With a secret set and legacy not allowed, the dialect itself is refused.
  detail::admin_protocol::config strict;
  strict.refuse_legacy = true;
  admin_bench fresh;
  auto e = from_agent(strict);
  r = fresh.feed(e, "NID::");
  CHECK(r.replies.empty());
  REQUIRE(only_effect(r));
  CHECK(std::string(r.effects[0].why) == "legacy dialect refused");
  CHECK_FALSE(r.effects[0].graceful);
  CHECK(fresh.list().empty());
  // ...but the native dialect is not.
  auto f = from_agent(strict);
  CHECK(fresh.say(f, "ping\n") == "pong\n");
}

TEST_CASE("native commands: register, ping, weight, close for an agent") {
  admin_bench bench;
  auto p = from_agent();
  CHECK(bench.say(p, "hello harmony/1\n") == "ok harmony/1 harmonyd/" + std::to_string(HARMONY_VERSION_MAJOR) + "." +
                                                 std::to_string(HARMONY_VERSION_MINOR) + "." +
                                                 std::to_string(HARMONY_VERSION_PATCH) + " auth=none\n");
  CHECK(p.current_dialect() == detail::dialect::native);
  CHECK(bench.say(p, "ping\n") == "pong\n");  // not an agent yet: nothing to ack
  CHECK(bench.say(p, "weight 900\n") == "err not-registered register first\n");
  CHECK(bench.say(p, "close\n") == "err not-registered register first\n");
  // register's arguments.
  const char* weight_error = "err bad-argument weight must be a number from 1 to 1048576\n";
  CHECK(bench.say(p, "register\n") == "err bad-argument register needs port=1..65535\n");
  CHECK(bench.say(p, "register port=0\n") == "err bad-argument register needs port=1..65535\n");
  CHECK(bench.say(p, "register port=65536\n") == "err bad-argument register needs port=1..65535\n");
  CHECK(bench.say(p, "register port=80 weight=0\n") == weight_error);
  CHECK(bench.say(p, "register port=80 weight=1048577\n") == weight_error);
  CHECK(bench.say(p, "register port=80 weight=x\n") == weight_error);
  CHECK(bench.say(p, "register port=80 heartbeat=soon\n") == "err bad-argument heartbeat is a duration, e.g. 20s\n");
  CHECK(bench.say(p, "register port=80 heartbeat=0\n") == "err bad-argument heartbeat is a duration, e.g. 20s\n");
  CHECK(bench.say(p, "register port=80 host=unresolvable\n") == "err bad-argument cannot resolve host\n");
  CHECK(bench.list().empty());
  CHECK_FALSE(p.agent());
  // A registration: the peer's host, the given port; the connection becomes the agent's.
  auto r = bench.feed(p, "register port=8080 weight=700 heartbeat=1s\n");
  const std::string id = nth_id(1);
  CHECK(r.text() == "ok id=" + id + "\n");
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].what == detail::admin_effect::kind::bind_agent);
  CHECK(r.effects[0].id == id);
  CHECK(r.effects[0].previous.empty());
  CHECK(p.agent());
  CHECK(p.bound_id() == id);
  CHECK(p.heartbeat_ms() == 1000);
  auto list = bench.list();
  REQUIRE(list.size() == 1);
  CHECK(list[0].address.to_string() == "203.0.113.5:8080");
  CHECK(list[0].weight == 700);
  CHECK(list[0].state == "up");
  // ping acks an agent.
  bench.now += 60001;
  CHECK(bench.list().at(0).state == "expired");
  CHECK(bench.say(p, "ping\n") == "pong\n");
  CHECK(bench.list().at(0).state == "up");
  // weight.
  CHECK(bench.say(p, "weight\n") == "err usage weight W\n");
  CHECK(bench.say(p, "weight 0\n") == weight_error);
  CHECK(bench.say(p, "weight 900\n") == "ok weight=900\n");
  CHECK(bench.list().at(0).weight == 900);
  // Registering again on the same connection under another id moves the agent.
  r = bench.feed(p, "register port=8081 host=backend.example\n");
  const std::string second = nth_id(2);
  CHECK(r.text() == "ok id=" + second + "\n");
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].id == second);
  CHECK(r.effects[0].previous == id);
  CHECK(bench.resolved.back() == "backend.example");
  CHECK(p.heartbeat_ms() == 0);
  // close deregisters the connection's own backend.
  r = bench.feed(p, "close\n");
  CHECK(r.text() == "ok closed id=" + second + "\n");
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].what == detail::admin_effect::kind::unbind_agent);
  CHECK(r.effects[0].id == second);
  CHECK_FALSE(p.agent());
  CHECK(p.bound_id().empty());
  CHECK(bench.list().size() == 1);
  CHECK(bench.say(p, "close\n") == "err not-registered register first\n");
}

TEST_CASE("native commands: an agent rejoins under its id, known or not") {
  admin_bench bench;
  auto p = from_agent();
  bench.say(p, "register port=80\n");
  const std::string id = nth_id(1);
  CHECK(bench.backends.lock()->set_online(id, false, bench.now) == std::error_code());
  CHECK(bench.list().at(0).state == "offline");
  // A new connection with the known id: the same backend, online, re-addressed and re-weighted.
  auto q = from_agent();
  auto r = bench.feed(q, "register port=81 id=" + id + " weight=3\n");
  CHECK(r.text() == "ok id=" + id + "\n");
  CHECK(r.effects.at(0).previous.empty());
  auto list = bench.list();
  REQUIRE(list.size() == 1);
  CHECK(list[0].state == "up");
  CHECK(list[0].weight == 3);
  CHECK(list[0].address.port == 81);
  // A balancer that never knew it keeps a well-formed free id, and replaces a bad one.
  admin_bench restarted;
  auto s = from_agent();
  const std::string old = "0123456789ABCDEF0123456789ABCDEF";
  CHECK(restarted.say(s, "register port=80 id=" + old + "\n") == "ok id=" + old + "\n");
  auto t = from_agent();
  CHECK(restarted.say(t, "register port=80 id=not-an-id\n") == "ok id=" + nth_id(1) + "\n");
  // The backend limit refuses.
  detail::registry_limits one;
  one.backends = 1;
  admin_bench full(one);
  auto u = from_agent();
  full.say(u, "register port=80\n");
  auto v = from_agent();
  r = full.feed(v, "register port=80\n");
  CHECK(r.text() == "err refused backend limit reached\n");
  CHECK(r.effects.empty());
  CHECK_FALSE(v.agent());
}

TEST_CASE("native commands: the operator's list, stats, add, remove, set-weight, drain") {
  admin_bench bench;
  auto op = from_agent();
  CHECK(bench.say(op, "list\n") == "ok backends=0\n");
  CHECK(bench.say(op, "add\n") == "err usage add HOST:PORT [weight=W]\n");
  CHECK(bench.say(op, "add nohost\n") ==
        "err bad-argument malformed address (expected HOST:PORT or [IPv6]:PORT)\n");
  CHECK(bench.say(op, "add 127.0.0.1:80 weight=x\n") ==
        "err bad-argument weight must be a number from 1 to 1048576\n");
  CHECK(bench.say(op, "add 127.0.0.1:0\n") == "err bad-argument invalid option value\n");
  const std::string a = nth_id(1), b = nth_id(2);
  CHECK(bench.say(op, "add 127.0.0.1:80 weight=300\n") == "ok id=" + a + "\n");
  CHECK(bench.say(op, "add [::1]:81\n") == "ok id=" + b + "\n");
  CHECK(bench.say(op, "list\n") == "backend id=" + a +
                                       " address=127.0.0.1:80 weight=300 active=0 total=0 failures=0 state=up\n"
                                       "backend id=" + b +
                                       " address=[::1]:81 weight=500 active=0 total=0 failures=0 state=up\n"
                                       "ok backends=2\n");
  bench.counters.accepted = 10;
  bench.counters.active = 2;
  bench.counters.queued = 3;
  bench.counters.unavailable = 4;
  bench.counters.connect_failures = 5;
  bench.counters.bytes_in = 6;
  bench.counters.bytes_out = 7;
  bench.counters.bytes_spliced = 8;
  bench.limit = 12;
  CHECK(bench.say(op, "stats\n") ==
        "ok accepted=10 active=2 queued=3 unavailable=4 connect_failures=5 bytes_in=6 bytes_out=7 bytes_spliced=8 "
        "backends=2 concurrency=12\n");
  // set-weight, drain, undrain, remove, with their usage and unknown-backend errors.
  CHECK(bench.say(op, "set-weight " + a + "\n") == "err usage set-weight ID W\n");
  CHECK(bench.say(op, "set-weight " + a + " 0\n") == "err bad-argument weight must be a number from 1 to 1048576\n");
  CHECK(bench.say(op, "set-weight nope 5\n") == "err unknown-backend unknown backend id\n");
  CHECK(bench.say(op, "set-weight " + a + " 1500\n") == "ok weight=1500\n");
  CHECK(bench.list().at(0).weight == 1500);
  CHECK(bench.say(op, "drain\n") == "err usage drain ID | undrain ID\n");
  CHECK(bench.say(op, "drain nope\n") == "err unknown-backend unknown backend id\n");
  CHECK(bench.say(op, "drain " + a + "\n") == "ok\n");
  CHECK(bench.list().at(0).state == "draining");
  CHECK(bench.say(op, "undrain " + a + "\n") == "ok\n");
  CHECK(bench.list().at(0).state == "up");
  CHECK(bench.say(op, "remove\n") == "err usage remove ID\n");
  CHECK(bench.say(op, "remove " + a + " extra\n") == "err usage remove ID\n");
  CHECK(bench.say(op, "remove " + a + "\n") == "ok\n");
  CHECK(bench.say(op, "remove " + a + "\n") == "err unknown-backend unknown backend id\n");
  CHECK(bench.say(op, "list\n").rfind("ok backends=1\n") != std::string::npos);
  CHECK_FALSE(op.agent());
}

TEST_CASE("native commands: concurrency, help, quit, comments, unknown commands, long lines") {
  admin_bench bench;
  auto op = from_agent();
  CHECK(bench.say(op, "concurrency\n") == "ok concurrency=-1\n");
  auto r = bench.feed(op, "concurrency 5\n");
  CHECK(r.text() == "ok concurrency=5\n");
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].what == detail::admin_effect::kind::set_concurrency);
  CHECK(r.effects[0].limit == 5);
  // Commands later in the same read see the limit the earlier one set.
  r = bench.feed(op, "concurrency 0\nconcurrency\nstats\n");
  CHECK(r.replies.at(1) == "ok concurrency=0\n");
  CHECK(r.replies.at(2).find(" concurrency=0\n") != std::string::npos);
  r = bench.feed(op, "concurrency -1\n");
  CHECK(r.text() == "ok concurrency=-1\n");
  CHECK(r.effects.at(0).limit == -1);
  std::string too_many = "concurrency " + std::to_string(static_cast<long long>(max_concurrency) + 1) + "\n";
  for (const std::string& bad : {std::string("concurrency x\n"), std::string("concurrency -2\n"), too_many}) {
    r = bench.feed(op, bad);
    CHECK(r.text() == "err bad-argument concurrency is -1 (no limit), 0 (paused) or N\n");
    CHECK(r.effects.empty());
  }
  // help lists the commands, then ok.
  std::string help = bench.say(op, "help\n");
  CHECK(help.rfind("# harmony/1 admin commands", 0) == 0);
  CHECK(help.find("# register port=P") != std::string::npos);
  CHECK(help.size() > 4);
  CHECK(help.substr(help.size() - 4) == "\nok\n");
  // Comments and blank lines get no answer; CRLF is accepted.
  CHECK(bench.feed(op, "# a note\n\n   \n").replies.empty());
  CHECK(bench.say(op, "ping\r\n") == "pong\n");
  CHECK(bench.say(op, "frobnicate now\n") == "err unknown-command 'frobnicate' (try 'help')\n");
  CHECK(bench.say(op, std::string(100, 'z') + "\n") ==
        "err unknown-command '" + std::string(64, 'z') + "' (try 'help')\n");
  // quit and bye: ok bye, a graceful end, and the rest of the read is ignored.
  for (const char* word : {"quit", "bye"}) {
    auto q = from_agent();
    r = bench.feed(q, std::string(word) + "\nping\n");
    CHECK(r.text() == "ok bye\n");
    REQUIRE(only_effect(r));
    CHECK(r.effects[0].what == detail::admin_effect::kind::end);
    CHECK(r.effects[0].graceful);
    CHECK(std::string(r.effects[0].why) == "quit");
    CHECK(bench.feed(q, "ping\n").replies.empty());
  }
  // A line over the limit: the error, then a graceful end.
  auto l = from_agent();
  r = bench.feed(l, std::string(5000, 'x'));
  CHECK(r.text() == "err line-too-long lines are limited to 4096 bytes\n");
  REQUIRE(only_effect(r));
  CHECK(r.effects[0].graceful);
  CHECK(std::string(r.effects[0].why) == "line too long");
  CHECK_FALSE(has_effect(bench.feed(l, "ping\n"), detail::admin_effect::kind::end));
}

TEST_CASE("admin dialect: undecided first bytes are held, then judged") {
  admin_bench bench;
  auto p = from_agent();
  CHECK(bench.feed(p, "N").replies.empty());  // could still be NID:
  CHECK(p.current_dialect() == detail::dialect::undecided);
  CHECK(bench.say(p, "ID::") == "NID:" + nth_id(1) + ":");
  auto q = from_agent();
  CHECK(bench.feed(q, "pi").replies.empty());  // native, but no line yet
  CHECK(q.current_dialect() == detail::dialect::native);
  CHECK(bench.say(q, "ng\n") == "pong\n");
  // Sixteen upper-case bytes that still look like a legacy prefix are native.
  auto r = from_agent();
  CHECK(bench.feed(r, "CLOS").replies.empty());
  CHECK(r.current_dialect() == detail::dialect::undecided);
  auto s = from_agent();
  bench.feed(s, std::string(16, 'A'));
  CHECK(s.current_dialect() == detail::dialect::native);
}
