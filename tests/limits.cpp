// The limits over real sockets: each one hit, what the peer sees, and the log line
// that says so. (EMFILE recovery needs a process of its own under a low descriptor
// limit: it is in tests/daemon.cpp, which drives harmonyd.)
#include "support.hpp"

using namespace test;

namespace {

std::string admin_of(const running_server& s) { return s.srv.admin_endpoint().to_string(); }

// Whether the balancer closes `s` (EOF or reset) within the time, reading what comes.
bool closed_by_peer(const sock& s, std::string* got = nullptr, std::chrono::milliseconds limit = 3000ms) {
  s.set_timeout(limit);
  std::string data;
  char b[4096];
  for (;;) {
    io_result k = recv_some(s.fd(), b, sizeof b);
    if (k > 0) {
      data.append(b, static_cast<std::size_t>(k));
      continue;
    }
    if (got) *got = data;
    if (k == 0) return true;
    return !interrupted() && last_error() != std::errc::resource_unavailable_try_again &&
           last_error() != std::errc::operation_would_block && last_error() != std::errc::timed_out;
  }
}

// A client that sends `x` and waits for the echo: served (true) or not within the time.
bool echoed(const sock& s, std::chrono::milliseconds limit) {
  s.set_timeout(limit);
  if (!s.send_all("x")) return false;
  return s.read_n(1) == "x";
}

}  // namespace

TEST_CASE("limits: an admin line over max_admin_line gets an error and the close, on both dialects") {
  captured_log log;
  auto o = quiet_options();
  o.max_admin_line = 300;
  log.attach(o);
  running_server s(o);
  // Native: the error line, then the close; what was sent past the limit is not kept.
  sock native = connect_to(admin_of(s));
  REQUIRE(native);
  native.send_all("hello " + std::string(200, 'x'));
  std::this_thread::sleep_for(5ms);  // two reads: the limit holds across them
  native.send_all(std::string(200, 'x'));
  std::string got;
  CHECK(closed_by_peer(native, &got));
  CHECK(got == "err line-too-long lines are limited to 300 bytes\n");
  CHECK(log.saw("refused: longer than 300 bytes; closing"));
  // Legacy: no error reply exists in that dialect; the close and the log say it.
  sock legacy = connect_to(admin_of(s));
  REQUIRE(legacy);
  legacy.send_all("ACK:" + std::string(harmony::legacy_max_token + 1, 'A'));
  CHECK(closed_by_peer(legacy, &got));
  CHECK(got.empty());
  CHECK(log.saw("a token is longer than 256 bytes; closing"));
  // A line within the limit still works.
  admin_session ok(admin_of(s));
  CHECK(ok.call("hello harmony/1").rfind("ok harmony/1", 0) == 0);
}

TEST_CASE("limits: max_admin_connections closes one more at once, and a freed place is taken again") {
  captured_log log;
  auto o = quiet_options();
  o.max_admin_connections = 2;
  log.attach(o);
  running_server s(o);
  admin_session a(admin_of(s)), b(admin_of(s));
  CHECK(a.call("ping") == "pong\n");
  CHECK(b.call("ping") == "pong\n");
  sock third = connect_to(admin_of(s));
  REQUIRE(third);
  CHECK(closed_by_peer(third));
  CHECK(log.saw("refused: 2 connections open (--max-admin-connections)"));
  // One goes: the next one is served.
  { admin_session gone = std::move(a); }
  CHECK(eventually([&] {
    admin_session again(admin_of(s));
    return again.call("ping") == "pong\n";
  }));
  CHECK(b.call("ping") == "pong\n");
}

TEST_CASE("limits: max_backends refuses one more registration on both dialects, and logs it") {
  captured_log log;
  auto o = quiet_options();
  o.max_backends = 2;
  log.attach(o);
  running_server s(o);
  admin_session one(admin_of(s)), two(admin_of(s)), three(admin_of(s));
  CHECK(one.call("register port=8001").rfind("ok id=", 0) == 0);
  CHECK(two.call("register port=8002").rfind("ok id=", 0) == 0);
  CHECK(three.call("register port=8003") == "err refused backend limit reached\n");
  CHECK(log.saw("registration from 127.0.0.1"));
  // A harmony.js agent is closed without an id.
  sock legacy = connect_to(admin_of(s));
  REQUIRE(legacy);
  legacy.send_all("NID::");
  std::string got;
  CHECK(closed_by_peer(legacy, &got));
  CHECK(got.empty());
  CHECK(log.saw("legacy registration from 127.0.0.1 refused: backend limit reached"));
  CHECK(s.srv.backends().size() == 2);
}

TEST_CASE("limits: at max_connections the next client waits in the backlog until one ends") {
  captured_log log;
  backend b(echo);
  auto o = quiet_options();
  o.max_connections = 2;
  log.attach(o);
  running_server s(o);
  s.add(b);
  sock first = connect_to(s.address()), second = connect_to(s.address());
  CHECK(echoed(first, 3000ms));
  CHECK(echoed(second, 3000ms));
  // The third connects (the kernel's backlog completes the handshake) but is not taken in.
  sock third = connect_to(s.address());
  REQUIRE(third);
  CHECK_FALSE(echoed(third, 300ms));
  CHECK(s.srv.stats().accepted == 2);
  CHECK(log.saw("2 client connections open (--max-connections): new ones wait in the backlog"));
  // One ends: the third is taken in and served, byte for byte.
  first.reset();
  third.set_timeout(3000ms);
  CHECK(third.read_n(1) == "x");  // the byte sent while it waited
  CHECK(echoed(third, 3000ms));
  CHECK(s.srv.stats().accepted == 3);
  CHECK(echoed(second, 3000ms));
}

TEST_CASE("limits: max_conns_per_client closes one more from the same address at once; others are served") {
  captured_log log;
  backend b(echo);
  auto o = quiet_options();
  o.max_conns_per_client = 2;
  log.attach(o);
  running_server s(o);
  s.add(b);
  sock one = connect_to(s.address()), two = connect_to(s.address());
  CHECK(echoed(one, 3000ms));
  CHECK(echoed(two, 3000ms));
  sock three = connect_to(s.address());
  REQUIRE(three);
  CHECK(closed_by_peer(three));
  CHECK(s.srv.stats().refused == 1);
  CHECK(log.saw("connection from 127.0.0.1 refused: 2 open from that address (--max-conns-per-client)"));
  // A flood is counted, and logged at most once per interval.
  for (int i = 0; i < 5; ++i) {
    sock more = connect_to(s.address());
    CHECK(closed_by_peer(more));
  }
  CHECK(s.srv.stats().refused == 6);
  CHECK(log.count("(--max-conns-per-client)") == 1);
  // Another client address is not counted against this one.
  sock other = connect_to(s.srv.listen_endpoint(), "127.0.0.2");
  CHECK(echoed(other, 3000ms));
  // One ends: that address gets a place again.
  one.reset();
  CHECK(eventually([&] {
    sock again = connect_to(s.address());
    return echoed(again, 1000ms);
  }));
}

TEST_CASE("limits: queue_limit refuses one more waiting connection, and logs why") {
  captured_log log;
  holding_backend h("h");
  auto o = quiet_options();
  o.concurrency = 1;
  o.queue_limit = 1;
  o.unavailable = "busy\n";
  log.attach(o);
  running_server s(o);
  s.add(h.server());
  sock holder = connect_to(s.address());
  CHECK(holder.read_n(1) == "h");
  sock queued = connect_to(s.address());
  REQUIRE(eventually([&] { return s.srv.stats().queued == 1; }));
  CHECK(round_trip(s.address(), "x") == "busy\n");
  CHECK(log.saw("wait queue is full"));
  CHECK(s.srv.stats().unavailable == 1);
}
