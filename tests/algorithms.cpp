// The algorithms of issue 12 over real loopback sockets: random (weighted power
// of two choices), hash (Maglev, the same on every balancer), per-backend
// maxconn and backup backends.
#include "support.hpp"

using namespace test;

namespace {
// Client x connects from 127.0.0.x: one client address each.
std::string source(int x) { return "127.0.0." + std::to_string(x); }

harmony::server_options with(harmony::algorithm a, bool persistent = false) {
  auto o = quiet_options();
  o.balance = a;
  o.persistent = persistent;  // off, so that what is seen is the algorithm's own choice
  return o;
}

std::string add(running_server& s, const backend& b, int weight, int maxconn = 0, bool backup = false) {
  harmony::backend_options o;
  o.weight = weight;
  o.maxconn = maxconn;
  o.backup = backup;
  std::string id;
  REQUIRE_FALSE(s.srv.add_backend(b.address(), o, &id));
  return id;
}

const harmony::backend_info* find(const std::vector<harmony::backend_info>& list, const std::string& id) {
  for (const auto& b : list)
    if (b.id == id) return &b;
  return nullptr;
}
}  // namespace

TEST_CASE("random: sequential connections split by weight, a loaded backend gets none") {
  backend a(named("a")), b(named("b"));
  running_server s(with(harmony::algorithm::random));
  s.add(a, 1000);
  s.add(b, 500);
  auto count = tally(s.address(), 300);
  INFO("a " << count["a"] << " b " << count["b"]);
  CHECK(count["a"] + count["b"] == 300);
  CHECK(count["a"] > 165);  // 200 expected; both are drawn, the first draw decides on a tie
  CHECK(count["a"] < 235);

  // A backend holding five open connections is always the more loaded of the two drawn.
  holding_backend h("h");
  backend c(named("c")), d(named("d"));
  running_server t(with(harmony::algorithm::random));
  t.add(h.server(), 500);
  std::vector<sock> held;
  for (int i = 0; i < 5; ++i) {
    held.push_back(connect_to(t.address()));
    REQUIRE(held.back().read_n(1) == "h");
  }
  t.add(c, 500);
  t.add(d, 500);
  count = tally(t.address(), 60);
  CHECK(count["h"] == 0);
  CHECK(count["c"] > 10);
  CHECK(count["d"] > 10);
}

TEST_CASE("hash: a client address keeps its backend, two balancers agree, removal moves only its clients") {
  constexpr int clients = 120;  // 127.0.0.2 … 127.0.0.121
  backend a(named("a")), b(named("b")), c(named("c")), d(named("d")), e(named("e"));
  running_server one(with(harmony::algorithm::hash)), two(with(harmony::algorithm::hash));
  std::map<std::string, std::string> ids;
  ids["a"] = add(one, a, 500);
  ids["b"] = add(one, b, 500);
  ids["c"] = add(one, c, 1000);
  ids["d"] = add(one, d, 500);
  ids["e"] = add(one, e, 500);
  // The other balancer learns them in another order.
  add(two, e, 500);
  add(two, c, 1000);
  add(two, a, 500);
  add(two, d, 500);
  add(two, b, 500);
  std::map<int, std::string> home;
  std::map<std::string, int> spread;
  for (int x = 2; x < 2 + clients; ++x) {
    std::string got = name_of(round_trip(one.address(), "x", source(x).c_str()));
    REQUIRE(got.size() == 1);
    home[x] = got;
    ++spread[got];
    CHECK(name_of(round_trip(one.address(), "x", source(x).c_str())) == got);
    CHECK(name_of(round_trip(two.address(), "x", source(x).c_str())) == got);
  }
  CHECK(spread.size() == 5);
  // Removing c (the heaviest, so it had many clients) moves its clients only.
  REQUIRE_FALSE(one.srv.remove_backend(ids["c"]));
  int others = 0, stayed = 0;
  for (int x = 2; x < 2 + clients; ++x) {
    std::string now = name_of(round_trip(one.address(), "x", source(x).c_str()));
    if (home[x] == "c") {
      CHECK(now != "c");
      continue;
    }
    ++others;
    stayed += now == home[x];
  }
  INFO(stayed << " of " << others << " stayed");
  CHECK(stayed >= 0.97 * others);
  CHECK(others < clients);
}

TEST_CASE("maxconn: the N+1-th parallel connection waits, and is served when one ends") {
  holding_backend h("h");
  auto o = with(harmony::algorithm::leastconn);
  running_server s(o);
  std::string id = add(s, h.server(), 500, /*maxconn=*/2);
  sock first = connect_to(s.address()), second = connect_to(s.address());
  REQUIRE(first.read_n(1) == "h");
  REQUIRE(second.read_n(1) == "h");
  sock third = connect_to(s.address());
  REQUIRE(third);
  CHECK(eventually([&] { return s.srv.stats().queued == 1; }));
  CHECK(h.open() == 2);
  auto list = s.srv.backends();
  REQUIRE(find(list, id));
  CHECK(find(list, id)->maxconn == 2);
  CHECK(find(list, id)->state == "full");
  CHECK_FALSE(wait_readable(third.fd(), 100));  // still waiting: no byte from the backend
  first.reset();  // the client closes first; the backend follows
  third.set_timeout(3s);
  CHECK(third.read_n(1) == "h");
  CHECK(eventually([&] { return s.srv.stats().queued == 0; }));
  CHECK(h.open() <= 2);
}

TEST_CASE("maxconn: a connection waiting for a full backend times out with the unavailable text") {
  holding_backend h("h");
  auto o = with(harmony::algorithm::roundrobin);
  o.queue_timeout = harmony::duration(200);
  o.unavailable = "busy\n";
  running_server s(o);
  add(s, h.server(), 500, /*maxconn=*/1);
  sock held = connect_to(s.address());
  REQUIRE(held.read_n(1) == "h");
  sock late = connect_to(s.address());
  late.set_timeout(3s);
  CHECK(late.read_all() == "busy\n");
  CHECK(s.srv.stats().unavailable == 1);
  CHECK(h.open() == 1);
}

TEST_CASE("maxconn: with several waiting, each release lets the oldest go") {
  holding_backend h("h");
  running_server s(with(harmony::algorithm::random));
  add(s, h.server(), 500, /*maxconn=*/1);
  sock holder = connect_to(s.address());
  REQUIRE(holder.read_n(1) == "h");
  std::vector<sock> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(connect_to(s.address()));
    std::size_t n = waiting.size();
    REQUIRE(eventually([&] { return s.srv.stats().queued == n; }));  // in this order
  }
  holder.reset();
  for (auto& w : waiting) {
    w.set_timeout(3s);
    CHECK(w.read_n(1) == "h");  // the oldest first: the others are still queued
    w.reset();
  }
}

TEST_CASE("backup: used only when the primaries are gone or full") {
  backend p(named("p")), k(named("k"));
  holding_backend q("q");
  running_server s(with(harmony::algorithm::leastconn));
  std::string primary = add(s, p, 500);
  std::string backup = add(s, k, 1000, 0, /*backup=*/true);
  auto count = tally(s.address(), 20);
  CHECK(count["p"] == 20);
  REQUIRE_FALSE(s.srv.drain(primary));
  count = tally(s.address(), 10);
  CHECK(count["k"] == 10);
  REQUIRE_FALSE(s.srv.drain(primary, false));
  CHECK(tally(s.address(), 10)["p"] == 10);
  // A primary at its maxconn sends the overflow to the backup.
  REQUIRE_FALSE(s.srv.remove_backend(primary));
  std::string full = add(s, q.server(), 500, /*maxconn=*/1);
  sock held = connect_to(s.address());
  REQUIRE(held.read_n(1) == "q");
  CHECK(tally(s.address(), 5)["k"] == 5);
  auto list = s.srv.backends();
  REQUIRE(find(list, backup));
  CHECK(find(list, backup)->backup);
  CHECK_FALSE(find(list, full)->backup);
}

TEST_CASE("admin: register maxconn=N limits an agent's backend; list shows it") {
  holding_backend h("h");
  running_server s(with(harmony::algorithm::hash));
  std::string admin = s.srv.admin_endpoint().to_string();
  sock agent = connect_to(admin);
  REQUIRE(agent);
  agent.set_timeout(3s);
  REQUIRE(agent.send_all("hello harmony/1\nregister port=" + std::to_string(h.server().at().port) +
                         " host=127.0.0.1 maxconn=1\n"));
  std::string reply;
  for (int i = 0; i < 200 && std::count(reply.begin(), reply.end(), '\n') < 2; ++i) {
    char buf[512];
    io_result n = recv_some(agent.fd(), buf, sizeof buf);
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  REQUIRE(reply.find("ok id=") != std::string::npos);
  sock op = connect_to(admin);
  op.send_all("list\nregister port=1 maxconn=-1\nquit\n");
  op.set_timeout(3s);
  std::string out = op.read_all();
  CHECK(out.find("maxconn=1 backup=no") != std::string::npos);
  CHECK(out.find("err bad-argument maxconn") != std::string::npos);
  // The limit holds for traffic too.
  sock first = connect_to(s.address());
  REQUIRE(first.read_n(1) == "h");
  sock second = connect_to(s.address());
  CHECK(eventually([&] { return s.srv.stats().queued == 1; }));
  first.reset();
  second.set_timeout(3s);
  CHECK(second.read_n(1) == "h");
}
