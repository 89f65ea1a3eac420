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
