// server::reconfigure over real sockets: a running server takes new options (the
// algorithm, a timeout, a raised connection limit, a new listen address) while the
// connections it has go on.
#include "support.hpp"

#include <filesystem>

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

// A balancer in front of an echo backend.
struct echo_balancer {
  explicit echo_balancer(std::size_t max_connections, int workers = 1)
      : options(options_with(max_connections, workers)), s(options) {
    s.add(b);
  }
  static harmony::server_options options_with(std::size_t max_connections, int workers) {
    auto o = quiet_options();
    o.max_connections = max_connections;
    o.workers = workers;
    return o;
  }
  backend b{echo};
  harmony::server_options options;
  running_server s;
};

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
  echo_balancer e(1);
  auto& s = e.s;
  const auto& o = e.options;
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
  echo_balancer e(2);
  auto& s = e.s;
  const auto& o = e.options;
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

namespace {

// Clients connecting one after another on a few threads, each connection checked
// byte-exact through an echo backend. The test moves `phase` on (0 before a change, 1
// while it happens, 2 after); refusals are counted by the phase the connect began in.
// Bounded: each thread stops after 400 connections, all stop after 200 in phase 2.
struct storm {
  explicit storm(std::function<harmony::endpoint()> target) : target_(std::move(target)) {
    for (unsigned i = 0; i < 4; ++i) threads_.emplace_back([this, i] { run(100 + i); });
  }
  ~storm() { join(); }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  std::atomic<int> phase{0};
  std::atomic<int> served{0}, broken{0}, after{0};
  std::atomic<int> refused[3] = {{0}, {0}, {0}};

 private:
  void run(unsigned seed) {
    const std::string payload = random_bytes(4096, seed);
    for (int n = 0; n < 400 && after.load() < 200; ++n) {
      int began = phase.load();
      sock c = connect_to(target_(), nullptr, 5000ms);
      if (!c) {
        ++refused[std::max(began, phase.load() == 1 ? 1 : began)];
        if (began < 2) eventually([&] { return phase.load() == 2; });  // what comes next is coming
        continue;
      }
      if (echoes(c, payload)) ++served;
      else ++broken;
      if (began == 2) ++after;
    }
  }
  std::function<harmony::endpoint()> target_;
  std::vector<std::thread> threads_;
};

}  // namespace

TEST_CASE("reconfigure: a storm of connections across a listen change sees no refusal and no reset") {
  echo_balancer e(0, 2);
  auto& s = e.s;
  const auto& o = e.options;
  std::mutex m;
  harmony::endpoint advertised = s.srv.listen_endpoint();
  storm clients([&] {
    std::lock_guard<std::mutex> lock(m);
    return advertised;
  });
  REQUIRE(eventually([&] { return clients.served.load() >= 100; }));
  harmony::server_options next = o;
  next.listen = "127.0.0.2:0";
  clients.phase = 1;
  REQUIRE_FALSE(s.srv.reconfigure(next));
  {
    std::lock_guard<std::mutex> lock(m);
    advertised = s.srv.listen_endpoint();
  }
  clients.phase = 2;
  clients.join();
  MESSAGE("served " << clients.served.load() << "; connects to the old address refused as it closed: "
                    << clients.refused[1].load());
  CHECK(clients.broken == 0);
  CHECK(clients.refused[0] == 0);
  CHECK(clients.refused[2] == 0);
  CHECK(clients.after >= 200);
}

TEST_CASE("upgrade: a successor takes the listeners and the registry over; no connection is refused or reset") {
  backend b(echo), registered(echo);
  auto o = quiet_options();
  o.workers = 2;
  auto first = std::make_unique<running_server>(o);
  first->add(b);
  admin_session agent(first->srv.admin_endpoint().to_string());
  std::string reply = agent.call("register port=" + std::to_string(registered.at().port));
  REQUIRE(reply.rfind("ok id=", 0) == 0);
  std::string id = reply.substr(6, reply.find_first_of(" \n", 6) - 6);
  harmony::endpoint at = first->srv.listen_endpoint();
  storm clients([at] { return at; });
  REQUIRE(eventually([&] { return clients.served.load() >= 100; }));
  clients.phase = 1;
  harmony::server_options next = o;
  REQUIRE_FALSE(first->srv.hand_out(next.inherited));
  CHECK_FALSE(next.inherited.listen.empty());  // two with SO_REUSEPORT, one where the first loop deals
  CHECK(next.inherited.admin >= 0);
  std::string saved = (std::filesystem::temp_directory_path() /
                       ("harmony-upgrade-" + std::to_string(std::random_device{}()))).string();
  REQUIRE_FALSE(first->srv.save_state(saved));
  next.restore_from = saved;
  harmony::server second(next);
  REQUIRE_FALSE(second.start());
  std::filesystem::remove(saved);
  REQUIRE_FALSE(second.add_backend(b.address(), 500));
  CHECK(second.listen_endpoint().to_string() == at.to_string());
  CHECK(second.admin_endpoint().to_string() == first->srv.admin_endpoint().to_string());
  auto kept = second.backends();
  CHECK(std::any_of(kept.begin(), kept.end(), [&](const harmony::backend_info& i) { return i.id == id; }));
  harmony::drain_report report = first->srv.hand_over(harmony::duration{5000});
  CHECK(report.cut == 0);
  first.reset();
  clients.phase = 2;
  clients.join();
  CHECK(clients.broken == 0);
  CHECK(clients.refused[0] + clients.refused[1] + clients.refused[2] == 0);
  CHECK(clients.after >= 200);
  // The agent's connection to the process before ended: it registers with the successor.
  admin_session again(second.admin_endpoint().to_string());
  CHECK(again.call("ping") == "pong\n");
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
