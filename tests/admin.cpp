// The admin port over real sockets: the harmony.js legacy dialect byte for
// byte, the native dialect, and malformed input.
#include "support.hpp"

using namespace test;

namespace {

bool is_id(const std::string& s) {
  return s.size() == 32 && s.find_first_not_of("0123456789ABCDEF") == std::string::npos;
}

harmony::server_options admin_options() {
  auto o = quiet_options();
  o.persistent = false;
  return o;
}

std::string admin_of(const running_server& s) { return s.srv.admin_endpoint().to_string(); }

}  // namespace

TEST_CASE("legacy registration is answered byte for byte, all at once and byte by byte") {
  backend b(named("b"));
  running_server s(admin_options());
  std::string port = std::to_string(b.at().port);
  std::string request = "NID::BAL:1000:SPORT:" + port + ":";
  std::string tail = "BAL:1000:SPORT:" + port + ":";
  SUBCASE("all at once") {
    std::string reply = admin_exchange(admin_of(s), {request}, 37 + tail.size());
    REQUIRE(reply.size() == 37 + tail.size());
    CHECK(reply.substr(0, 4) == "NID:");
    CHECK(is_id(reply.substr(4, 32)));
    CHECK(reply.substr(36) == ":" + tail);
  }
  SUBCASE("one byte per write") {
    std::vector<std::string> pieces;
    for (char c : request) pieces.emplace_back(1, c);
    std::string reply = admin_exchange(admin_of(s), pieces, 37 + tail.size());
    REQUIRE(reply.size() == 37 + tail.size());
    CHECK(is_id(reply.substr(4, 32)));
    CHECK(reply.substr(36) == ":" + tail);
  }
  // Either way the backend is registered with its weight, port and peer address.
  auto list = s.srv.backends();
  REQUIRE(list.size() == 1);
  CHECK(list[0].weight == 1000);
  CHECK(list[0].address.to_string() == b.address());
  CHECK(list[0].state == "up");
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
}

TEST_CASE("legacy ack cycle, unknown ids, BYE and empty tokens") {
  running_server s(admin_options());
  std::string id = legacy_register(admin_of(s), 500, 9);
  REQUIRE(is_id(id));
  bool closed = false;
  std::string ack = "ACK:" + id + ":ID:" + id + ":";
  CHECK(admin_exchange(admin_of(s), {"ACK:" + id + ":", "ID:" + id + ":", "BYE:"}, ack.size(), &closed) == ack);
  CHECK(closed);  // BYE closes the connection
  CHECK(admin_exchange(admin_of(s), {"ID:0123:"}, 9) == "BID:0123:");
  CHECK(admin_exchange(admin_of(s), {"ACK:0123:"}, 9) == "ACK:0123:");
  // Empty tokens between messages are skipped; a split token still counts once.
  CHECK(admin_exchange(admin_of(s), {"::ACK:01", "23:::ID:", id + ":"}, 9 + 4 + id.size()) == "ACK:0123:ID:" + id + ":");
  // BAL with a non-number means 500; the echo stays byte for byte what was sent.
  CHECK(admin_exchange(admin_of(s), {"ID:" + id + ":BAL:heavy:"}, id.size() + 4 + 10) == "ID:" + id + ":BAL:heavy:");
  CHECK(s.srv.backends().at(0).weight == 500);
  CHECK(admin_exchange(admin_of(s), {"ID:" + id + ":BAL:1200:"}, id.size() + 4 + 9) == "ID:" + id + ":BAL:1200:");
  CHECK(s.srv.backends().at(0).weight == 1200);
}

TEST_CASE("legacy close deregisters at once and echoes CLOSE and ID") {
  backend one(named("one")), two(named("two"));
  running_server s(admin_options());
  std::string id1 = legacy_register(admin_of(s), 1000, one.at().port);
  std::string id2 = legacy_register(admin_of(s), 500, two.at().port);
  REQUIRE(is_id(id1));
  REQUIRE(is_id(id2));
  auto count = tally(s.address(), 30);
  CHECK(count["one"] == 20);
  CHECK(count["two"] == 10);
  // harmony.js close(): the agent never sends BYE and leaves the connection open.
  sock agent = connect_to(admin_of(s));
  std::string close = "CLOSE:" + id1 + ":ID:" + id1 + ":";
  agent.send_all(close);
  CHECK(agent.read_n(close.size()) == close);
  count = tally(s.address(), 10);
  CHECK(count["two"] == 10);
  CHECK(s.srv.backends().size() == 1);
}

TEST_CASE("a backend that stops acking expires after the host timeout and returns on its next ack") {
  backend b(named("b"));
  auto o = admin_options();
  o.host_timeout = std::chrono::milliseconds(400);
  o.unavailable = "unavailable\n";
  running_server s(o);
  auto registered = std::chrono::steady_clock::now();  // no later than the balancer's ack time
  std::string id = legacy_register(admin_of(s), 500, b.at().port);
  REQUIRE(is_id(id));
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
  REQUIRE(eventually([&] { return s.srv.backends().at(0).state == "expired"; }, 3000ms));
  // Not before the host timeout (the balancer's clock counts whole milliseconds).
  CHECK(std::chrono::steady_clock::now() - registered >= 395ms);
  CHECK(round_trip(s.address(), "x") == "unavailable\n");
  legacy_ack(admin_of(s), id);
  CHECK(s.srv.backends().at(0).state == "up");
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
}

TEST_CASE("legacy registration without a port is not eligible") {
  auto o = admin_options();
  o.unavailable = "none\n";
  running_server s(o);
  CHECK(admin_exchange(admin_of(s), {"NID::"}, 37).substr(0, 4) == "NID:");
  CHECK(s.srv.backends().at(0).state == "no-port");
  CHECK(round_trip(s.address(), "x") == "none\n");
}

TEST_CASE("malformed admin input gets an error or a close, and the balancer carries on") {
  backend b(named("b"));
  running_server s(admin_options());
  s.add(b);
  bool closed = false;
  // An unknown legacy command closes the connection.
  admin_exchange(admin_of(s), {"NID::FOO:bar:"}, 37 + 8, &closed);
  CHECK(closed);
  // An oversized legacy token closes it too.
  closed = false;
  admin_exchange(admin_of(s), {"ACK:" + std::string(5000, 'A')}, 100, &closed);
  CHECK(closed);
  // Garbage is native: an unknown command gets an error line.
  CHECK(admin_exchange(admin_of(s), {"\x01\x02garbage\n"}, 16).rfind("err unknown-com", 0) == 0);
  // An oversized native line gets an error, then a close.
  std::string reply = admin_exchange(admin_of(s), {std::string(10000, 'x')}, 14, &closed);
  CHECK(reply == "err line-too-l");
  CHECK(closed);
  // Binary noise.
  admin_exchange(admin_of(s), {random_bytes(20000, 5)}, 1);
  // After all that the balancer still serves.
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
  admin_session op(admin_of(s));
  std::string list = op.call("list");
  // The NID before the unknown command registered a backend (without a port).
  CHECK_MESSAGE(list.find("ok backends=2") != std::string::npos, list);
}

TEST_CASE("the native dialect registers an agent whose connection is its liveness") {
  backend b(named("b"));
  auto o = admin_options();
  o.unavailable = "none\n";
  running_server s(o);
  admin_session agent(admin_of(s));
  REQUIRE(agent);
  CHECK(agent.call("hello harmony/1").rfind("ok harmony/1", 0) == 0);
  std::string reply = agent.call("register port=" + std::to_string(b.at().port) + " weight=700 heartbeat=1s");
  REQUIRE(reply.rfind("ok id=", 0) == 0);
  std::string id = reply.substr(6, 32);
  CHECK(is_id(id));
  CHECK(agent.call("ping") == "pong\n");
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
  CHECK(s.srv.backends().at(0).weight == 700);
  CHECK(agent.call("weight 900") == "ok weight=900\n");
  CHECK(s.srv.backends().at(0).weight == 900);
  CHECK(agent.call("weight lots").rfind("err bad-argument", 0) == 0);
  CHECK(agent.call("register weight=5").rfind("err bad-argument", 0) == 0);
  // The agent's connection drops: its backend is offline at once, not after the host timeout.
  {
    admin_session gone = std::move(agent);
  }
  CHECK(eventually([&] { return s.srv.backends().at(0).state == "offline"; }, 2000ms));
  CHECK(round_trip(s.address(), "x") == "none\n");
  // It comes back under the same id.
  admin_session again(admin_of(s));
  CHECK(again.call("register id=" + id + " port=" + std::to_string(b.at().port)) == "ok id=" + id + "\n");
  CHECK(s.srv.backends().at(0).state == "up");
  CHECK(name_of(round_trip(s.address(), "x")) == "b");
  CHECK(again.call("close") == "ok closed id=" + id + "\n");
  CHECK(s.srv.backends().empty());
  // An unknown but well-formed id is kept (a balancer that restarted); a malformed one is replaced.
  admin_session third(admin_of(s));
  CHECK(third.call("register id=" + id + " port=" + std::to_string(b.at().port)) == "ok id=" + id + "\n");
  std::string other = third.call("register id=not-an-id port=" + std::to_string(b.at().port));
  CHECK(other.rfind("ok id=", 0) == 0);
  CHECK(other.find("not-an-id") == std::string::npos);
}

TEST_CASE("a native agent that goes silent is taken offline after three heartbeats") {
  // Three heartbeats of 400 ms (a floor of 1 s applies to shorter ones). A second
  // agent keeps pinging: it must still be up when the silent one goes offline.
  backend b(named("b"));
  running_server s(admin_options());
  admin_session keeper(admin_of(s)), silent(admin_of(s));
  std::string reg = "register port=" + std::to_string(b.at().port) + " heartbeat=400ms";
  std::string keeper_reply = keeper.call(reg);
  REQUIRE(keeper_reply.rfind("ok id=", 0) == 0);
  std::string keeper_id = keeper_reply.substr(6, 32);
  auto start = std::chrono::steady_clock::now();  // no later than the silent agent's last word
  std::string silent_reply = silent.call(reg);
  REQUIRE(silent_reply.rfind("ok id=", 0) == 0);
  std::string silent_id = silent_reply.substr(6, 32);
  auto state_of = [&](const std::string& id) {
    for (auto& e : s.srv.backends())
      if (e.id == id) return e.state;
    return std::string("<gone>");
  };
  CHECK(state_of(silent_id) == "up");
  bool pongs = true;
  REQUIRE(eventually([&] {
    pongs = pongs && keeper.call("ping") == "pong\n";
    return state_of(silent_id) == "offline";
  }, 3000ms));
  CHECK(std::chrono::steady_clock::now() - start >= 1195ms);
  CHECK(pongs);
  CHECK(state_of(keeper_id) == "up");
}

TEST_CASE("operator commands: list, stats, set-weight, drain, add, remove, concurrency") {
  backend one(named("one")), two(named("two"));
  running_server s(admin_options());
  std::string id1 = s.add(one, 500);
  std::string id2 = s.add(two, 500);
  admin_session op(admin_of(s));
  std::string list = op.call("list");
  CHECK(list.find("backend id=" + id1 + " address=" + one.address() + " weight=500 active=0") != std::string::npos);
  CHECK(list.find("state=up") != std::string::npos);
  CHECK(list.find("ok backends=2") != std::string::npos);
  CHECK(op.call("set-weight " + id2 + " 1500") == "ok weight=1500\n");
  auto count = tally(s.address(), 20);
  CHECK(count["two"] == 15);
  CHECK(op.call("drain " + id2) == "ok\n");
  CHECK(op.call("list").find("state=draining") != std::string::npos);
  count = tally(s.address(), 10);
  CHECK(count["one"] == 10);
  CHECK(op.call("undrain " + id2) == "ok\n");
  CHECK(op.call("stats").find("accepted=30 active=0") != std::string::npos);
  CHECK(op.call("concurrency") == "ok concurrency=-1\n");
  CHECK(op.call("concurrency 5") == "ok concurrency=5\n");
  CHECK(op.call("concurrency many").rfind("err bad-argument", 0) == 0);
  CHECK(op.call("remove " + id1) == "ok\n");
  CHECK(op.call("remove " + id1).rfind("err unknown-backend", 0) == 0);
  CHECK(op.call("set-weight " + id2).rfind("err usage", 0) == 0);
  CHECK(op.call("set-weight " + id2 + " 0").rfind("err bad-argument", 0) == 0);
  std::string added = op.call("add " + one.address() + " weight=300");
  CHECK(added.rfind("ok id=", 0) == 0);
  CHECK(op.call("add nowhere").rfind("err bad-argument", 0) == 0);
  CHECK(op.call("help").find("register port=P") != std::string::npos);
  CHECK(op.call("frobnicate").rfind("err unknown-command", 0) == 0);
  CHECK(op.call("quit") == "ok bye\n");
}
