// Health detection over real loopback sockets, through harmony::server: passive
// detection of refused and blackholed backends, the trial that brings one back,
// and the active checks (TCP connect, send/expect).
#include "../harmony.hpp"
#include "support.hpp"

using namespace test;

namespace {

// Collects the balancer's log lines.
struct log_capture {
  std::mutex m;
  std::vector<std::string> lines;
  harmony::log_function sink() {
    return [this](harmony::log_level, std::string_view text) {
      if (std::getenv("HARMONY_TEST_LOG")) std::fprintf(stderr, "%.*s\n", static_cast<int>(text.size()), text.data());
      std::lock_guard<std::mutex> lock(m);
      lines.emplace_back(text);
    };
  }
  // Lines that contain every one of `parts`.
  std::size_t count(std::initializer_list<std::string> parts) {
    std::lock_guard<std::mutex> lock(m);
    std::size_t n = 0;
    for (const auto& l : lines) {
      bool all = true;
      for (const auto& p : parts) all = all && l.find(p) != std::string::npos;
      n += all;
    }
    return n;
  }
};

harmony::server_options logged(log_capture& logs) {
  auto o = quiet_options();
  o.persistent = false;
  o.log = logs.sink();
  o.level = harmony::log_level::info;
  return o;
}

std::string state_of(const harmony::server& srv, const std::string& id) {
  for (const auto& b : srv.backends())
    if (b.id == id) return b.state;
  return "<gone>";
}

// Answers a check: reads up to a newline, writes `reply`, then waits for EOF.
backend::handler answering(std::string reply) {
  return [reply](const sock& s) {
    std::string got;
    char b[256];
    while (got.find('\n') == std::string::npos) {
      io_result k = recv_some(s.fd(), b, sizeof b);
      if (k <= 0) return;
      got.append(b, static_cast<std::size_t>(k));
    }
    s.send_all(reply);
    s.read_all();
  };
}

}  // namespace

TEST_CASE("health: a refused backend costs a few of 200 sequential connections, and every one is served exactly") {
  backend live(echo);
  log_capture logs;
  std::atomic<int> failures{0};
  auto o = logged(logs);
  o.on_backend_error = [&](const std::string&, std::error_code) { ++failures; };
  running_server s(o);
  std::string dead;
  REQUIRE_FALSE(s.srv.add_backend("127.0.0.1:" + std::to_string(dead_port()), 500, &dead));
  std::string live_id = s.add(live, 500);
  auto start = std::chrono::steady_clock::now();
  int served = 0;
  for (int i = 0; i < 200; ++i) {
    std::string request = random_bytes(100 + static_cast<std::size_t>(i) * 37, static_cast<unsigned>(i));
    served += round_trip(s.address(), request) == request;
  }
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(served == 200);
  // max_fails (1) attempts, plus one trial per fail_timeout (10 s) the run lasted.
  int allowed = harmony::default_max_fails + static_cast<int>(took / harmony::default_fail_timeout);
  MESSAGE("attempts on the refused backend: " << failures.load() << " of 200 in "
                                              << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                              << " ms");
  CHECK(failures <= allowed);
  CHECK(failures >= 1);  // leastconn does try it
  CHECK(state_of(s.srv, dead) == "down");
  CHECK(state_of(s.srv, live_id) == "up");
  // One line when it went down, none per connection.
  CHECK(logs.count({"backend " + dead, ") down: ", "failed attempt", "out for 10s"}) == 1);
  CHECK(logs.count({"backend " + dead + " ("}) == 2);  // state changes: registered, down
  // The admin port's list says so too.
  admin_session admin(s.srv.admin_endpoint().to_string());
  REQUIRE(admin);
  std::string list = admin.call("list");
  CHECK(list.find("id=" + dead) != std::string::npos);
  CHECK(list.find("state=down") != std::string::npos);
}

TEST_CASE("health: a blackholed backend costs a connect timeout or two, not one per connection") {
  blackhole hole;
  if (!hole.hangs) SKIP_CASE("connects to a full accept queue do not hang on this system");
  backend live(echo);
  log_capture logs;
  std::atomic<int> failures{0};
  auto o = logged(logs);
  o.connect_timeout = 300ms;
  o.on_backend_error = [&](const std::string&, std::error_code e) {
    CHECK(e == harmony::errc::connect_timeout);
    ++failures;
  };
  running_server s(o);
  std::string hole_id;
  REQUIRE_FALSE(s.srv.add_backend(hole.address(), 500, &hole_id));
  s.add(live, 500);
  auto start = std::chrono::steady_clock::now();
  int served = 0;
  for (int i = 0; i < 100; ++i) {
    std::string request = "request " + std::to_string(i);
    served += round_trip(s.address(), request) == request;
  }
  auto took = std::chrono::steady_clock::now() - start;
  MESSAGE("100 connections with a blackholed backend: "
          << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms, " << failures.load()
          << " connect timeouts");
  CHECK(served == 100);
  CHECK(failures <= 2);
  CHECK(took < 100 * o.connect_timeout / 10);  // without detection: about 100 * 300 ms
  CHECK(state_of(s.srv, hole_id) == "down");
  CHECK(logs.count({"backend " + hole_id, ") down: ", "backend connect timed out"}) == 1);
}

TEST_CASE("health: after fail_timeout one trial connection finds the backend back and restores it") {
  backend live(named("live"));
  log_capture logs;
  std::atomic<int> failures{0};
  auto o = logged(logs);
  o.fail_timeout = 300ms;
  o.on_backend_error = [&](const std::string&, std::error_code) { ++failures; };
  running_server s(o);
  std::uint16_t port = dead_port();
  std::string id;
  REQUIRE_FALSE(s.srv.add_backend("127.0.0.1:" + std::to_string(port), 500, &id));
  s.add(live, 500);
  for (int i = 0; i < 50 && failures == 0; ++i) CHECK(round_trip(s.address(), "x") == "live:1");
  REQUIRE(failures == 1);
  CHECK(state_of(s.srv, id) == "down");
  // It comes back on the same port; the next connection after the time out is its trial.
  backend revived(named("revived"), "127.0.0.1", port);
  REQUIRE(revived.listening());
  bool back = eventually([&] { return round_trip(s.address(), "x") == "revived:1"; }, 5000ms);
  CHECK(back);
  CHECK(state_of(s.srv, id) == "up");
  CHECK(failures == 1);
  CHECK(logs.count({"backend " + id, ") up: its trial connection was served"}) == 1);
  // It takes its share again.
  auto count = tally(s.address(), 20);
  CHECK(count["revived"] >= 5);
  CHECK(count["live"] >= 5);
}

TEST_CASE("health: passive detection off (max_fails 0) tries a refused backend on every connection") {
  backend live(named("live"));
  std::atomic<int> failures{0};
  auto o = quiet_options();
  o.persistent = false;
  o.max_fails = 0;
  o.on_backend_error = [&](const std::string&, std::error_code) { ++failures; };
  running_server s(o);
  std::string dead;
  REQUIRE_FALSE(s.srv.add_backend("127.0.0.1:" + std::to_string(dead_port()), 500, &dead));
  s.add(live, 500);
  for (int i = 0; i < 20; ++i) CHECK(round_trip(s.address(), "x") == "live:1");
  CHECK(failures >= 5);  // the old behaviour, when asked for
  CHECK(state_of(s.srv, dead) == "up");
}

TEST_CASE("health: an active check marks a backend that stops listening down, and up once it listens again") {
  log_capture logs;
  auto o = logged(logs);
  o.check_interval = 100ms;
  o.check_fall = 2;
  o.check_rise = 2;
  running_server s(o);
  auto first = std::make_unique<backend>(named("b"));
  std::uint16_t port = first->at().port;
  std::string id = s.add(*first, 500);
  CHECK(eventually([&] { return first->accepted() >= 2; }, 3000ms));  // probed, and passing
  CHECK(state_of(s.srv, id) == "up");
  first.reset();  // stops listening
  auto stopped = std::chrono::steady_clock::now();
  CHECK(eventually([&] { return state_of(s.srv, id) == "down"; }, 3000ms));
  auto took = std::chrono::steady_clock::now() - stopped;
  MESSAGE("down after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 1500ms);  // fall * interval, with room for a loaded machine
  CHECK(logs.count({"backend " + id, ") down: its health check failed 2 times in a row"}) == 1);
  admin_session admin(s.srv.admin_endpoint().to_string());
  REQUIRE(admin);
  CHECK(admin.call("list").find("state=down") != std::string::npos);
  // Nobody can serve meanwhile: no attempt on the down backend.
  CHECK(round_trip(s.address(), "x").empty());
  backend again(named("again"), "127.0.0.1", port);
  REQUIRE(again.listening());
  CHECK(eventually([&] { return state_of(s.srv, id) == "up"; }, 3000ms));
  CHECK(logs.count({"backend " + id, ") up: its health check passed 2 times in a row"}) == 1);
  CHECK(round_trip(s.address(), "x") == "again:1");
}

TEST_CASE("health: check-send / check-expect: a backend whose reply lacks the text goes down, the other stays up") {
  backend right(answering("+PONG\r\n")), wrong(answering("-ERR unknown\r\n"));
  auto o = quiet_options();
  o.persistent = false;
  o.check_interval = 100ms;
  o.check_fall = 2;
  o.check_send = "PING\r\n";
  o.check_expect = "PONG";
  running_server s(o);
  std::string right_id = s.add(right, 500);
  std::string wrong_id = s.add(wrong, 500);
  CHECK(eventually([&] { return state_of(s.srv, wrong_id) == "down"; }, 3000ms));
  // Both were probed as often: by now the right one passed at least twice.
  CHECK(right.accepted() >= 2);
  CHECK(state_of(s.srv, right_id) == "up");
  for (int i = 0; i < 5; ++i) {
    sock c = connect_to(s.address());
    REQUIRE(c);
    c.send_all("PING\n");
    CHECK(c.read_n(7) == "+PONG\r\n");
  }
}
