// server::reconfigure over real sockets: a running server takes new options (the
// algorithm, a timeout, a raised connection limit, a new listen address) while the
// connections it has go on.
#include "support.hpp"

using namespace test;

namespace {

// Sends `payload` and reads as many bytes back through an echo backend: byte-exact or not.
bool echoes(const sock& s, const std::string& payload, std::chrono::milliseconds limit = 5000ms) {
  s.set_timeout(limit);
  return s.send_all(payload) && s.read_n(payload.size()) == payload;
}

// Whether the peer closes `s` within the limit (EOF or reset), whatever comes first.
bool closed_within(const sock& s, std::chrono::milliseconds limit) {
  s.set_timeout(limit);
  char b[256];
  for (;;) {
    io_result k = recv_some(s.fd(), b, sizeof b);
    if (k > 0) continue;
    if (k == 0) return true;
    return !interrupted() && last_error() != std::errc::resource_unavailable_try_again &&
           last_error() != std::errc::operation_would_block && last_error() != std::errc::timed_out;
  }
}

}  // namespace

TEST_CASE("reconfigure: the algorithm and persistence change for the next connections") {
  backend one(named("one")), two(named("two"));
  auto o = quiet_options();
  o.balance = harmony::algorithm::roundrobin;
  o.persistent = false;
  running_server s(o);
  s.add(one);
  s.add(two);
  auto split = tally(s.address(), 20);
  CHECK(split["one"] == 10);
  CHECK(split["two"] == 10);
  // hash on the client address: one address, one backend.
  harmony::server_options next = o;
  next.balance = harmony::algorithm::hash;
  std::vector<std::string> restart{"stale"};
  REQUIRE_FALSE(s.srv.reconfigure(next, &restart));
  CHECK(restart.empty());
  auto hashed = tally(s.address(), 20);
  CHECK(hashed.size() == 1);
  CHECK(hashed.begin()->second == 20);
  // Back to roundrobin, now persistent: the client keeps the backend it gets first.
  next.balance = harmony::algorithm::roundrobin;
  next.persistent = true;
  REQUIRE_FALSE(s.srv.reconfigure(next));
  auto kept = tally(s.address(), 20);
  CHECK(kept.size() == 1);
  // Bad options are refused and change nothing.
  harmony::server_options bad = next;
  bad.balance = harmony::algorithm::leastconn;
  bad.requeue = -5;
  CHECK(s.srv.reconfigure(bad) == harmony::errc::bad_option);
  CHECK(tally(s.address(), 10).size() == 1);
}

TEST_CASE("reconfigure: a new idle timeout closes an idle connection; restart-only options are named") {
  backend b(echo);
  auto o = quiet_options();
  o.idle_timeout = harmony::duration{0};  // never
  running_server s(o);
  s.add(b);
  sock before = connect_to(s.address());
  REQUIRE(echoes(before, "x"));
  harmony::server_options next = o;
  next.idle_timeout = harmony::duration{200};
  next.workers = 2;
  next.buffer_bytes = o.buffer_bytes * 2;
  std::vector<std::string> restart;
  REQUIRE_FALSE(s.srv.reconfigure(next, &restart));
  CHECK(restart == std::vector<std::string>{"workers", "buffer_bytes"});
  sock after = connect_to(s.address());
  REQUIRE(echoes(after, "y"));
  CHECK(closed_within(after, 3000ms));
  // The one from before keeps running (with no idle timer, as it began).
  CHECK(echoes(before, "z"));
}

TEST_CASE("reconfigure: a raised max_connections takes in the client waiting in the backlog") {
  backend b(echo);
  auto o = quiet_options();
  o.max_connections = 1;
  running_server s(o);
  s.add(b);
  sock first = connect_to(s.address());
  REQUIRE(echoes(first, "a"));
  sock second = connect_to(s.address());
  REQUIRE(second);
  REQUIRE(second.send_all("b"));
  CHECK(eventually([&] { return s.srv.stats().accepted == 1; }));
  harmony::server_options next = o;
  next.max_connections = 2;
  REQUIRE_FALSE(s.srv.reconfigure(next));
  second.set_timeout(5000ms);
  CHECK(second.read_n(1) == "b");
  CHECK(echoes(first, "c"));
}

#if !defined(_WIN32)
TEST_CASE("reconfigure: a new listen address serves, the old one's backlog is served, open connections go on") {
  backend b(echo);
  auto o = quiet_options();
  o.max_connections = 2;
  running_server s(o);
  s.add(b);
  harmony::endpoint old_at = s.srv.listen_endpoint();
  const std::string payload = random_bytes(64 * 1024, 11);
  sock held1 = connect_to(old_at), held2 = connect_to(old_at);
  REQUIRE(echoes(held1, payload));
  REQUIRE(echoes(held2, payload));
  // At the limit: these three wait in the old listener's backlog, their connect done.
  std::vector<sock> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(connect_to(old_at));
    REQUIRE(waiting.back());
    REQUIRE(waiting.back().send_all(payload));
  }
  CHECK(s.srv.stats().accepted == 2);
  harmony::server_options next = o;
  next.listen = "127.0.0.2:0";
  next.max_connections = 10;
  std::vector<std::string> restart;
  REQUIRE_FALSE(s.srv.reconfigure(next, &restart));
  CHECK(restart.empty());
  harmony::endpoint new_at = s.srv.listen_endpoint();
  CHECK(new_at.host == "127.0.0.2");
  for (auto& w : waiting) {
    w.set_timeout(5000ms);
    CHECK(w.read_n(payload.size()) == payload);
  }
  CHECK(echoes(held1, payload));
  CHECK(echoes(held2, payload));
  sock fresh = connect_to(new_at);
  REQUIRE(fresh);
  CHECK(echoes(fresh, payload));
  CHECK_FALSE(connect_to(old_at));  // refused: closed
  // A listen address that cannot be bound is refused, and nothing changes.
  harmony::server_options taken = next;
  taken.listen = new_at.to_string();
  taken.max_connections = 3;
  CHECK(s.srv.reconfigure(taken));
  CHECK(s.srv.listen_endpoint().to_string() == new_at.to_string());
  CHECK(echoes(fresh, payload));
}

TEST_CASE("reconfigure: a storm of connections across a listen change sees no refusal and no reset") {
  backend b(echo);
  auto o = quiet_options();
  o.workers = 2;
  running_server s(o);
  s.add(b);
  std::mutex m;
  harmony::endpoint advertised = s.srv.listen_endpoint();
  std::atomic<bool> changing{false}, changed{false};
  std::atomic<int> served{0}, broken{0}, refused_before{0}, refused_during{0}, refused_after{0}, after_change{0};
  auto client = [&](unsigned seed) {
    const std::string payload = random_bytes(4096, seed);
    for (int n = 0; n < 400 && after_change.load() < 200; ++n) {
      harmony::endpoint at;
      bool late = changed.load(), during = changing.load();
      {
        std::lock_guard<std::mutex> lock(m);
        at = advertised;
      }
      sock c = connect_to(at, nullptr, 5000ms);
      if (!c) {
        ++(late ? refused_after : during || changing.load() ? refused_during : refused_before);
        if (!late) eventually([&] { return changed.load(); });  // the new address is coming
        continue;
      }
      if (echoes(c, payload)) ++served;
      else ++broken;
      if (late) ++after_change;
    }
  };
  std::vector<std::thread> storm;
  for (unsigned i = 0; i < 4; ++i) storm.emplace_back(client, 100 + i);
  REQUIRE(eventually([&] { return served.load() >= 100; }));
  harmony::server_options next = o;
  next.listen = "127.0.0.2:0";
  changing = true;
  REQUIRE_FALSE(s.srv.reconfigure(next));
  {
    std::lock_guard<std::mutex> lock(m);
    advertised = s.srv.listen_endpoint();
  }
  changed = true;
  for (auto& t : storm) t.join();
  MESSAGE("served " << served.load() << ", connects to the old address refused while it closed: "
                    << refused_during.load());
  CHECK(broken == 0);
  CHECK(refused_before == 0);
  CHECK(refused_after == 0);
  CHECK(after_change >= 200);
}
#else
TEST_CASE("reconfigure: on Windows a changed listen address is named for a restart") {
  auto o = quiet_options();
  running_server s(o);
  harmony::server_options next = o;
  next.listen = "127.0.0.1:1";
  std::vector<std::string> restart;
  REQUIRE_FALSE(s.srv.reconfigure(next, &restart));
  CHECK(restart == std::vector<std::string>{"listen"});
}
#endif

TEST_CASE("reconfigure: before start every option is taken") {
  auto o = quiet_options();
  harmony::server srv(o);
  harmony::server_options next = o;
  next.workers = 3;
  next.balance = harmony::algorithm::random;
  std::vector<std::string> restart;
  REQUIRE_FALSE(srv.reconfigure(next, &restart));
  CHECK(restart.empty());
  REQUIRE_FALSE(srv.start());
  CHECK(srv.listen_endpoint().port != 0);
}
