// The harmony.js behaviours over real sockets: persistence, the concurrency
// queue, requeue, unavailable, idle timeout, and the agent.
#include "support.hpp"

using namespace test;

namespace {
std::string admin_of(const running_server& s) { return s.srv.admin_endpoint().to_string(); }

// Each client source address 127.0.0.x is one persistent client.
std::string from(int x) { return "127.0.0." + std::to_string(x); }
}  // namespace

TEST_CASE("persistence keeps each client address on its backend, and re-places it when the backend leaves") {
  backend a(named("a")), b(named("b")), c(named("c"));
  running_server s(quiet_options());  // persistent is the default
  std::map<std::string, std::string> ids{{"a", s.add(a)}, {"b", s.add(b)}, {"c", s.add(c)}};
  std::map<int, std::string> home;
  std::set<std::string> used;
  for (int x = 2; x <= 10; ++x) {
    home[x] = name_of(round_trip(s.address(), "hi", from(x).c_str()));
    used.insert(home[x]);
    for (int i = 0; i < 4; ++i) CHECK(name_of(round_trip(s.address(), "again", from(x).c_str())) == home[x]);
  }
  CHECK(used.size() == 3);  // different clients still spread
  std::string leaving = home[2];
  REQUIRE_FALSE(s.srv.remove_backend(ids[leaving]));
  std::string moved = name_of(round_trip(s.address(), "hi", from(2).c_str()));
  CHECK(moved != leaving);
  CHECK((moved == "a" || moved == "b" || moved == "c"));
  for (int i = 0; i < 3; ++i) CHECK(name_of(round_trip(s.address(), "again", from(2).c_str())) == moved);
  // A drained backend is not eligible either: its clients move too.
  REQUIRE_FALSE(s.srv.drain(ids[moved]));
  std::string third = name_of(round_trip(s.address(), "hi", from(2).c_str()));
  CHECK(third != moved);
  CHECK(third != leaving);
}

TEST_CASE("without persistence one client address spreads over the backends") {
  backend a(named("a")), b(named("b"));
  auto o = quiet_options();
  o.persistent = false;
  running_server s(o);
  s.add(a);
  s.add(b);
  std::set<std::string> seen;
  for (int i = 0; i < 4; ++i) seen.insert(name_of(round_trip(s.address(), "x", from(2).c_str())));
  CHECK(seen.size() == 2);
}

TEST_CASE("concurrency N: at most N proxied, the rest wait in order and go as slots free") {
  holding_backend h("h");
  auto o = quiet_options();
  o.concurrency = 2;
  running_server s(o);
  s.add(h.server());
  sock first = connect_to(s.address()), second = connect_to(s.address());
  CHECK(first.read_n(1) == "h");
  CHECK(second.read_n(1) == "h");
  // Three more wait, in this order.
  std::vector<sock> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(connect_to(s.address()));
    REQUIRE(eventually([&] { return s.srv.stats().queued == static_cast<std::uint64_t>(i + 1); }));
  }
  // The balancer counts them as queued, so none has been sent on.
  CHECK(h.open() == 2);
  for (auto& w : waiting) CHECK(nothing_to_read(w));
  for (auto& w : waiting) w.set_timeout(3s);
  first.reset();  // frees a slot: the oldest waiter goes, and only it
  CHECK(waiting[0].read_n(1) == "h");
  CHECK(s.srv.stats().queued == 2);
  CHECK(nothing_to_read(waiting[1]));
  CHECK(nothing_to_read(waiting[2]));
  second.reset();
  CHECK(waiting[1].read_n(1) == "h");
  CHECK(s.srv.stats().queued == 1);
  CHECK(nothing_to_read(waiting[2]));  // the newest still waits
  CHECK(eventually([&] { return h.open() == 2; }));
  // Raising the limit releases the rest at once.
  REQUIRE_FALSE(s.srv.set_concurrency(-1));
  CHECK(waiting[2].read_n(1) == "h");
  CHECK(s.srv.stats().queued == 0);
}

TEST_CASE("concurrency 0 pauses: connections are accepted and wait until resumed") {
  backend b(named("b"));
  auto o = quiet_options();
  o.concurrency = 0;
  running_server s(o);
  s.add(b);
  std::string reply, later;
  std::thread client([&] { reply = round_trip(s.address(), "paused"); });
  REQUIRE(eventually([&] { return s.srv.stats().queued == 1; }));
  // A second client queues behind it: the balancer has handled a later event and
  // still holds the first (it would have left the queue to be served).
  std::thread second([&] { later = round_trip(s.address(), "later"); });
  CHECK(eventually([&] { return s.srv.stats().queued == 2; }));
  CHECK(b.accepted() == 0);
  REQUIRE_FALSE(s.srv.set_concurrency(-1));
  client.join();
  second.join();
  CHECK(reply == "b:6");
  CHECK(later == "b:5");
}

TEST_CASE("the wait queue has a timeout and a length limit, each reported as unavailable") {
  holding_backend h("h");
  std::mutex m;
  std::vector<std::error_code> reasons;
  auto o = quiet_options();
  o.concurrency = 1;
  o.queue_limit = 1;
  o.queue_timeout = std::chrono::milliseconds(300);
  o.on_unavailable = [&](std::error_code why, harmony::rejected_connection& c) {
    std::lock_guard<std::mutex> lock(m);
    reasons.push_back(why);
    c.send("busy: " + why.message() + "\n");
  };
  running_server s(o);
  s.add(h.server());
  sock holder = connect_to(s.address());
  CHECK(holder.read_n(1) == "h");
  auto start = std::chrono::steady_clock::now();  // before the balancer queues it
  sock queued = connect_to(s.address());
  REQUIRE(eventually([&] { return s.srv.stats().queued == 1; }));
  // The queue is full: the next client is refused at once.
  CHECK(round_trip(s.address(), "x") == "busy: wait queue is full\n");
  CHECK(queued.read_all() == "busy: timed out in the wait queue\n");
  // Not before the queue timeout (the balancer's clock counts whole milliseconds).
  CHECK(std::chrono::steady_clock::now() - start >= 295ms);
  std::lock_guard<std::mutex> lock(m);
  REQUIRE(reasons.size() == 2);
  CHECK(reasons[0] == harmony::errc::queue_full);
  CHECK(reasons[1] == harmony::errc::queue_timeout);
}

TEST_CASE("unavailable: the callback learns why and speaks to the client") {
  std::mutex m;
  std::vector<std::pair<std::error_code, std::string>> seen;
  auto o = quiet_options();
  o.requeue = 0;
  o.on_unavailable = [&](std::error_code why, harmony::rejected_connection& c) {
    std::lock_guard<std::mutex> lock(m);
    seen.emplace_back(why, c.peer());
    c.send("sorry\n");
  };
  running_server s(o);
  // No backend at all.
  CHECK(round_trip(s.address(), "x", "127.0.0.3") == "sorry\n");
  // A backend that refuses, with no requeue left.
  REQUIRE_FALSE(s.srv.add_backend("127.0.0.1:" + std::to_string(dead_port()), 500));
  CHECK(round_trip(s.address(), "x") == "sorry\n");
  std::lock_guard<std::mutex> lock(m);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].first == harmony::errc::no_backend);
  CHECK(seen[0].second.rfind("127.0.0.3:", 0) == 0);
  CHECK(seen[1].first == harmony::errc::attempts_exhausted);
}

TEST_CASE("without unavailable text or callback the client is simply closed") {
  running_server s(quiet_options());
  sock c = connect_to(s.address());
  REQUIRE(c);
  std::string reply;
  CHECK(c.read_to_eof(reply));
  CHECK(reply.empty());
}

TEST_CASE("requeue: failed attempts move on to other backends, up to N more") {
  backend good(named("good"));
  // A backend that accepts and resets before any byte.
  backend resetter([](const sock& c) {
    set_linger_zero(c.fd());
  });
  std::atomic<int> failures{0};
  auto o = quiet_options();
  o.persistent = false;
  o.requeue = 2;
  // The requeue alone: passive health detection would take both broken backends out
  // after their first failure, so the second connection would not try them again
  // (tests/health.cpp covers that).
  o.max_fails = 0;
  o.unavailable = "none\n";
  o.on_backend_error = [&](const std::string&, std::error_code) { ++failures; };
  running_server s(o);
  std::string dead1, dead2;
  REQUIRE_FALSE(s.srv.add_backend("127.0.0.1:" + std::to_string(dead_port()), 1000, &dead1));
  REQUIRE_FALSE(s.srv.add_backend(resetter.address(), 1000, &dead2));
  std::string good_id = s.add(good, 1);
  // Heaviest first: both broken backends are tried before the good one.
  CHECK(round_trip(s.address(), "payload") == "good:7");
  CHECK(failures == 2);
  // With requeue 1 there is one attempt too few.
  REQUIRE_FALSE(s.srv.remove_backend(good_id));
  failures = 0;
  CHECK(round_trip(s.address(), "payload") == "none\n");
  CHECK(failures == 2);
}

TEST_CASE("idle proxied connections are closed after the idle timeout") {
  holding_backend h("h");
  auto o = quiet_options();
  o.idle_timeout = std::chrono::milliseconds(300);
  running_server s(o);
  s.add(h.server());
  sock c = connect_to(s.address());
  CHECK(c.read_n(1) == "h");
  auto start = std::chrono::steady_clock::now();
  std::string rest;
  CHECK(c.read_to_eof(rest));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= 250ms);
  CHECK(took < 3s);
}

TEST_CASE("agent: registers, serves by weight, changes weight, and close() deregisters at once") {
  backend heavy(named("heavy")), light(named("light"));
  auto o = quiet_options();
  o.persistent = false;
  running_server s(o);
  harmony::client_options co;
  co.balancer = admin_of(s);
  co.port = heavy.at().port;
  co.weight = 1000;
  harmony::client agent_heavy(co);
  co.port = light.at().port;
  co.weight = 500;
  harmony::client agent_light(co);
  REQUIRE_FALSE(agent_heavy.start());
  REQUIRE_FALSE(agent_light.start());
  REQUIRE(eventually([&] { return agent_heavy.registered() && agent_light.registered(); }));
  CHECK(agent_heavy.id().size() == 32);
  auto count = tally(s.address(), 30);
  CHECK(count["heavy"] == 20);
  CHECK(count["light"] == 10);
  REQUIRE_FALSE(agent_light.set_weight(1000));
  REQUIRE(eventually([&] {
    for (auto& b : s.srv.backends())
      if (b.id == agent_light.id()) return b.weight == 1000;
    return false;
  }));
  REQUIRE_FALSE(agent_heavy.close());
  CHECK(s.srv.backends().size() == 1);
  count = tally(s.address(), 10);
  CHECK(count["light"] == 10);
  CHECK(agent_heavy.close() == harmony::errc::not_running);
  CHECK(agent_heavy.start() == harmony::errc::shutting_down);
}

TEST_CASE("agent: reconnects and registers again after the balancer restarts") {
  backend b(named("b"));
  // Pick an admin port, then run two balancer lifetimes on it.
  harmony::endpoint admin_at;
  { sock probe = listen_on("127.0.0.1", admin_at); }
  auto o = quiet_options();
  o.admin = admin_at.to_string();
  o.unavailable = "none\n";
  harmony::client_options co;
  co.balancer = admin_at.to_string();
  co.port = b.at().port;
  co.ack = std::chrono::milliseconds(200);
  co.reconnect_min = std::chrono::milliseconds(20);
  co.reconnect_max = std::chrono::milliseconds(200);
  harmony::client agent(co);
  REQUIRE_FALSE(agent.start());
  std::string first_id;
  {
    running_server s(o);
    REQUIRE(eventually([&] { return agent.registered(); }));
    CHECK(name_of(round_trip(s.address(), "x")) == "b");
    first_id = agent.id();
  }
  CHECK(eventually([&] { return !agent.registered(); }));
  running_server again(o);
  REQUIRE(eventually([&] { return agent.registered(); }, 5000ms));
  REQUIRE(again.srv.backends().size() == 1);
  // The new balancer knew nothing of it, yet the agent keeps its identity.
  CHECK(agent.id() == first_id);
  CHECK(again.srv.backends()[0].id == first_id);
  CHECK(name_of(round_trip(again.address(), "x")) == "b");
}

TEST_CASE("agent: keeps its id when its connection drops but the balancer remembers it") {
  backend b(named("b"));
  running_server s(quiet_options());
  // The agent reaches the admin port through a relay that can be cut: another balancer.
  harmony::endpoint relay_at;
  { sock probe = listen_on("127.0.0.1", relay_at); }
  auto ro = quiet_options();
  ro.listen = relay_at.to_string();
  ro.admin = "";
  auto relay = std::make_unique<running_server>(ro);
  relay->srv.add_backend(admin_of(s), 500);
  harmony::client_options co;
  co.balancer = relay_at.to_string();
  co.port = b.at().port;
  co.reconnect_min = std::chrono::milliseconds(20);
  harmony::client agent(co);
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] { return agent.registered(); }));
  std::string id = agent.id();
  relay.reset();  // cuts the agent's admin connection
  CHECK(eventually([&] { return s.srv.backends().at(0).state == "offline"; }));
  relay = std::make_unique<running_server>(ro);
  relay->srv.add_backend(admin_of(s), 500);
  CHECK(eventually([&] { return s.srv.backends().at(0).state == "up"; }, 5000ms));
  CHECK(agent.id() == id);
  CHECK(s.srv.backends().size() == 1);
}

TEST_CASE("agent options are checked") {
  harmony::client_options co;
  co.balancer = "nowhere";
  CHECK(harmony::client(co).start() == harmony::errc::bad_address);
  co.balancer = "127.0.0.1:1";
  co.port = 0;
  CHECK(harmony::client(co).start() == harmony::errc::bad_option);
}
