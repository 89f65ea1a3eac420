// Backends from DNS through the library, on every engine: names every machine
// resolves without root (localhost, numeric addresses). The daemon test in
// tests/daemon.cpp follows a name whose addresses change.
#include "support.hpp"

using namespace test;

namespace {
// The backends resolved from `source`.
std::vector<harmony::backend_info> from(const harmony::server& srv, const std::string& source) {
  std::vector<harmony::backend_info> out;
  for (auto& b : srv.backends())
    if (b.source == source) out.push_back(b);
  return out;
}
bool up_at(const harmony::server& srv, const std::string& source, const std::string& address) {
  for (auto& b : from(srv, source))
    if (b.address.to_string() == address && b.state == "up") return true;
  return false;
}
}  // namespace

TEST_CASE("add_backend_name: localhost's addresses carry traffic; a name added while running is resolved at once") {
  backend local(named("local")), other(named("other"));
  auto o = quiet_options();
  o.resolve_interval = harmony::min_resolve_interval;
  o.requeue = 2;  // localhost may resolve to ::1 too, where nothing listens
  harmony::server srv(o);
  std::string port = std::to_string(local.at().port);
  std::string name = "localhost:" + port;
  REQUIRE_FALSE(srv.add_backend_name(name, 700));
  CHECK(srv.backends().empty());  // resolved by the server's own thread, once it runs
  REQUIRE_FALSE(srv.start());
  std::string listen = srv.listen_endpoint().to_string();
  REQUIRE(eventually([&] { return up_at(srv, name, "127.0.0.1:" + port); }));
  auto found = from(srv, name);
  for (const auto& b : found) {
    CHECK(b.weight == 700);
    CHECK((b.address.host == "127.0.0.1" || b.address.host == "::1"));
    CHECK(b.address.port == local.at().port);
  }
  for (int i = 0; i < 5; ++i) CHECK(round_trip(listen, "x") == "local:1");

  // A numeric name, while running: the resolver does not wait for its interval.
  REQUIRE_FALSE(srv.add_backend_name(other.address()));
  REQUIRE(eventually([&] { return up_at(srv, other.address(), other.address()); }));
  CHECK(from(srv, other.address()).size() == 1);

  // Stopped and started again: the names stay and their backends are not added twice.
  std::size_t before = srv.backends().size();
  srv.stop();
  REQUIRE_FALSE(srv.start());
  listen = srv.listen_endpoint().to_string();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // three intervals (only an absence is checked)
  CHECK(srv.backends().size() == before);
  std::set<std::string> names;
  for (int i = 0; i < 10; ++i) names.insert(name_of(round_trip(listen, "x")));
  CHECK(names.count("local") + names.count("other") == names.size());
  srv.stop();
}

TEST_CASE("add_backend_name with backend_options: each backend of the name has its limit and role") {
  backend p(named("p"));
  holding_backend h("h");
  auto o = quiet_options();
  o.resolve_interval = harmony::min_resolve_interval;
  running_server s(o);
  std::string primary = s.add(p);
  harmony::backend_options bo;
  bo.maxconn = 1;
  bo.backup = true;
  std::string name = h.server().address();
  REQUIRE_FALSE(s.srv.add_backend_name(name, bo));
  REQUIRE(eventually([&] { return from(s.srv, name).size() == 1; }));
  auto found = from(s.srv, name);
  CHECK(found[0].maxconn == 1);
  CHECK(found[0].backup);
  CHECK(tally(s.address(), 10)["p"] == 10);  // a backup: not while the primary serves
  REQUIRE_FALSE(s.srv.drain(primary));
  sock held = connect_to(s.address());
  REQUIRE(held.read_n(1) == "h");
  sock next = connect_to(s.address());  // the backup is at its maxconn: this one waits
  REQUIRE(eventually([&] { return s.srv.stats().queued == 1; }));
  CHECK(h.open() == 1);
  held.reset();
  next.set_timeout(3s);
  CHECK(next.read_n(1) == "h");
  bo.maxconn = -1;
  CHECK(s.srv.add_backend_name(name, bo) == harmony::errc::bad_option);
}

// ---- SRV names, asked of a name server the test runs on loopback (test::name_server).
namespace {
const harmony::backend_info* at_port(const std::vector<harmony::backend_info>& list, std::uint16_t port) {
  for (const auto& b : list)
    if (b.address.port == port) return &b;
  return nullptr;
}
}  // namespace

TEST_CASE("SRV names: ports, weights and priorities from the records, followed as they change") {
  backend a(named("a")), b(named("b")), c(named("c"));
  name_server dns;
  const std::string service = "_web._tcp.harmony.test";
  dns.set({{10, 2, a.at().port, "web.harmony.test"}, {10, 1, b.at().port, "web.harmony.test"},
           {20, 7, c.at().port, "127.0.0.1"}},  // no address record: getaddrinfo reads the numeric target
          {{"web.harmony.test", {127, 0, 0, 1}}});
  auto o = quiet_options();
  o.resolve_interval = harmony::min_resolve_interval;
  o.nameservers = {dns.address()};
  o.persistent = false;
  harmony::server srv(o);
  REQUIRE_FALSE(srv.add_backend_name(service));
  REQUIRE_FALSE(srv.start());
  std::string listen = srv.listen_endpoint().to_string();
  REQUIRE(eventually([&] { return from(srv, service).size() == 3; }));
  auto list = from(srv, service);
  REQUIRE(at_port(list, a.at().port));
  REQUIRE(at_port(list, b.at().port));
  REQUIRE(at_port(list, c.at().port));
  CHECK(at_port(list, a.at().port)->weight == 2);
  CHECK(at_port(list, b.at().port)->weight == 1);
  CHECK(at_port(list, c.at().port)->weight == 7);
  CHECK_FALSE(at_port(list, a.at().port)->backup);
  CHECK(at_port(list, c.at().port)->backup);  // priority 20: while a or b can serve, c gets nothing
  auto counts = tally(listen, 30);
  CHECK(counts["a"] + counts["b"] == 30);
  CHECK(counts["a"] > counts["b"]);

  // a's record goes, b's weight changes, c is promoted: a drains and goes once idle.
  dns.set({{10, 4, b.at().port, "web.harmony.test"}, {10, 1, c.at().port, "127.0.0.1"}},
          {{"web.harmony.test", {127, 0, 0, 1}}});
  REQUIRE(eventually([&] {
    auto l = from(srv, service);
    auto* nb = at_port(l, b.at().port);
    auto* nc = at_port(l, c.at().port);
    return !at_port(l, a.at().port) && nb && nb->weight == 4 && nc && !nc->backup;
  }));
  counts = tally(listen, 30);
  CHECK(counts["a"] == 0);
  CHECK(counts["b"] + counts["c"] == 30);
  CHECK(counts["c"] > 0);

  // A failing name server: the last good set is kept.
  dns.fail(2);  // SERVFAIL
  int asked = dns.udp_queries();
  REQUIRE(eventually([&] { return dns.udp_queries() >= asked + 3; }));
  CHECK(from(srv, service).size() == 2);
  CHECK(tally(listen, 10)["b"] > 0);
  dns.fail(0);

  // A truncated UDP answer is asked again over TCP, whose answer counts.
  dns.truncate_udp(true);
  dns.set({{10, 1, a.at().port, "127.0.0.1"}});
  REQUIRE(eventually([&] {
    auto l = from(srv, service);
    return at_port(l, a.at().port) && at_port(l, a.at().port)->state == "up";
  }));
  CHECK(dns.tcp_queries() > 0);
  REQUIRE(eventually([&] { return tally(listen, 5)["a"] == 5; }));
  srv.stop();
}

TEST_CASE("SRV names: a bad name server option is refused by check(); a query nobody answers fails, then recovers") {
  auto o = quiet_options();
  o.nameservers = {"not an address"};
  harmony::option_problem problem;
  CHECK(harmony::check(o, &problem) == harmony::errc::bad_address);
  CHECK(std::string(problem.option) == "nameservers");
  // A name server port where nothing answers: the name has no backends, and no loop blocks meanwhile.
  backend a(named("a"));
  name_server dns;
  dns.set({{1, 1, a.at().port, "127.0.0.1"}});
  sock silent;  // bound, never read: queries to it go unanswered
  o.nameservers = {"127.0.0.1:" + std::to_string(bind_udp(silent)), dns.address()};
  o.resolve_interval = harmony::min_resolve_interval;
  harmony::server srv(o);
  REQUIRE_FALSE(srv.add_backend_name("_svc._tcp.harmony.test"));
  REQUIRE_FALSE(srv.start());
  // The first server never answers (within its second), the second does.
  REQUIRE(eventually([&] { return from(srv, "_svc._tcp.harmony.test").size() == 1; }));
  CHECK(round_trip(srv.listen_endpoint().to_string(), "x") == "a:1");
  srv.stop();
}
