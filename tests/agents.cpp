// One agent, many balancers (issue 12): the same id everywhere, independent
// reconnects, close() from all within one bounded wait; and the agent's reports
// (weight, readiness, maxconn) over real sockets.
#include "support.hpp"

using namespace test;

namespace {
std::string admin_of(const running_server& s) { return s.srv.admin_endpoint().to_string(); }

// An admin address nothing uses yet, so that a balancer can restart on it.
std::string free_admin() {
  harmony::endpoint at;
  sock probe = listen_on("127.0.0.1", at);
  return at.to_string();
}

harmony::client_options agent_options(std::vector<std::string> balancers, std::uint16_t port) {
  harmony::client_options co;
  co.balancers = std::move(balancers);
  co.port = port;
  co.ack = std::chrono::milliseconds(200);
  co.reconnect_min = std::chrono::milliseconds(20);
  co.reconnect_max = std::chrono::milliseconds(200);
  return co;
}

std::vector<harmony::backend_info> listed(const running_server& s) { return s.srv.backends(); }

// The state of the only backend a balancer lists, or what it lists instead.
std::string only_state(const running_server& s) {
  auto list = listed(s);
  return list.size() == 1 ? list[0].state : std::to_string(list.size()) + " backends";
}

// Writes its name and a newline at once, then echoes until the client's FIN.
backend::handler greeter(std::string name) {
  return [name](const sock& c) {
    c.send_all(name + "\n");
    echo(c);
  };
}
std::string greeted_by(const sock& c) {
  std::string line;
  for (int i = 0; i < 64; ++i) {
    std::string b = c.read_n(1);
    if (b.empty() || b == "\n") break;
    line += b;
  }
  return line;
}
// Connects through `listen` and says who answered, once the connection is over.
std::string who_serves(const std::string& listen) {
  sock c = connect_to(listen);
  if (!c) return "<connect failed>";
  c.shutdown_send();
  std::string all = c.read_all();
  return all.substr(0, all.find('\n'));
}
std::map<std::string, int> who_serves(const std::string& listen, int n) {
  std::map<std::string, int> count;
  for (int i = 0; i < n; ++i) ++count[who_serves(listen)];
  return count;
}

// A native balancer the test plays: `answer` gives the reply to each register line
// (e.g. "ok id=..."); ping gets pong; close and everything else get no answer.
class fake_balancer {
 public:
  explicit fake_balancer(std::function<std::string(const std::string&)> answer)
      : answer_(std::move(answer)), b_([this](const sock& c) { serve(c); }) {}
  std::string address() const { return b_.address(); }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(m_);
    return lines_;
  }
  bool heard(const std::string& prefix) {
    for (const auto& l : lines())
      if (l.rfind(prefix, 0) == 0) return true;
    return false;
  }
  // Ends every connection it serves (a FIN): the agent reconnects.
  void hang_up() {
    std::lock_guard<std::mutex> lock(m_);
    for (socket_t fd : open_) ::shutdown(fd, shut_send);
    open_.clear();
  }

 private:
  void serve(const sock& c) {
    {
      std::lock_guard<std::mutex> lock(m_);
      open_.push_back(c.fd());
    }
    std::string buffer;
    char chunk[4096];
    for (;;) {
      io_result k = recv_some(c.fd(), chunk, sizeof chunk);
      if (k <= 0) break;
      buffer.append(chunk, static_cast<std::size_t>(k));
      for (std::size_t nl; (nl = buffer.find('\n')) != std::string::npos;) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        {
          std::lock_guard<std::mutex> lock(m_);
          lines_.push_back(line);
        }
        if (line.rfind("register", 0) == 0) c.send_all(answer_(line) + "\n");
        else if (line == "ping") c.send_all("pong\n");
      }
    }
    std::lock_guard<std::mutex> lock(m_);
    for (auto it = open_.begin(); it != open_.end(); ++it)
      if (*it == c.fd()) {
        open_.erase(it);
        break;
      }
  }
  std::function<std::string(const std::string&)> answer_;
  std::mutex m_;
  std::vector<std::string> lines_;
  std::vector<socket_t> open_;
  backend b_;
};
}  // namespace

TEST_CASE("agents: one agent, two balancers: one id, traffic through both, a restart of one leaves the other alone") {
  backend b(greeter("b"));
  auto o = quiet_options();
  o.persistent = false;
  running_server one(o);
  auto o2 = o;
  o2.admin = free_admin();
  auto two = std::make_unique<running_server>(o2);
  harmony::client agent(agent_options({admin_of(one), o2.admin}, b.at().port));
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] {
    auto st = agent.status();
    return st.size() == 2 && st[0].registered && st[1].registered;
  }));
  std::string id = agent.id();
  CHECK(id.size() == 32);
  REQUIRE(listed(one).size() == 1);
  REQUIRE(listed(*two).size() == 1);
  CHECK(listed(one)[0].id == id);
  CHECK(listed(*two)[0].id == id);
  auto st = agent.status();
  CHECK(st[0].balancer == admin_of(one));
  CHECK(st[1].balancer == o2.admin);
  CHECK(st[0].id == id);
  CHECK(st[1].id == id);
  CHECK(st[0].registrations == 1);
  CHECK(st[1].registrations == 1);
  CHECK(who_serves(one.address()) == "b");
  CHECK(who_serves(two->address()) == "b");

  // The second balancer goes away; the first keeps its registration and its traffic.
  two.reset();
  REQUIRE(eventually([&] { return !agent.status()[1].registered; }));
  CHECK(agent.registered());
  CHECK(agent.status()[0].registered);
  CHECK(only_state(one) == "up");
  CHECK(who_serves(one.address()) == "b");
  // It comes back empty and learns the same id; the first one never noticed.
  two = std::make_unique<running_server>(o2);
  REQUIRE(eventually([&] { return agent.status()[1].registered; }));
  REQUIRE(listed(*two).size() == 1);
  CHECK(listed(*two)[0].id == id);
  CHECK(who_serves(two->address()) == "b");
  st = agent.status();
  CHECK(st[0].registrations == 1);
  CHECK(st[1].registrations == 2);
  CHECK(agent.id() == id);

  // close() deregisters from both before it returns.
  REQUIRE_FALSE(agent.close());
  CHECK(listed(one).empty());
  CHECK(listed(*two).empty());
  CHECK_FALSE(agent.registered());
  CHECK_FALSE(agent.status()[0].registered);
}

TEST_CASE("agents: a balancer that is down at the start is joined when it comes up, under the same id") {
  backend b(greeter("b"));
  running_server one(quiet_options());
  auto o2 = quiet_options();
  o2.admin = free_admin();
  harmony::client agent(agent_options({o2.admin, admin_of(one)}, b.at().port));
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] { return agent.status()[1].registered; }));
  CHECK_FALSE(agent.status()[0].registered);
  CHECK(agent.registered());
  running_server two(o2);
  REQUIRE(eventually([&] { return agent.status()[0].registered; }));
  REQUIRE(listed(two).size() == 1);
  CHECK(listed(two)[0].id == listed(one).at(0).id);
}

TEST_CASE("agents: a balancer that gives another id than asked is logged and keeps its own") {
  backend b(greeter("b"));
  running_server real(quiet_options());
  const std::string other = "FEDCBA9876543210FEDCBA9876543210";
  // It refuses to assign an id itself, and answers a wanted id with its own.
  fake_balancer odd([&](const std::string& line) {
    return line.find(" id=") == std::string::npos ? std::string("err refused try again") : "ok id=" + other;
  });
  std::mutex m;
  std::vector<std::string> warnings;
  auto co = agent_options({odd.address(), admin_of(real)}, b.at().port);
  co.level = harmony::log_level::warn;
  co.log = [&](harmony::log_level, std::string_view text) {
    std::lock_guard<std::mutex> lock(m);
    warnings.emplace_back(text);
  };
  harmony::client agent(co);
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] {
    auto st = agent.status();
    return st[0].registered && st[1].registered;
  }));
  auto st = agent.status();
  std::string id = agent.id();
  CHECK(st[1].id == id);
  CHECK(listed(real).at(0).id == id);
  CHECK(st[0].id == other);
  CHECK(odd.heard("register port=" + std::to_string(b.at().port) + " weight=500 heartbeat=200ms id=" + id));
  {
    std::lock_guard<std::mutex> lock(m);
    bool logged = false;
    for (const auto& w : warnings) logged = logged || w.find("refused the id " + id) != std::string::npos;
    CHECK(logged);
  }
  // Back after a reconnect, it asks that balancer for the id it got there.
  CHECK_FALSE(odd.heard("register port=" + std::to_string(b.at().port) + " weight=500 heartbeat=200ms id=" + other));
  odd.hang_up();
  CHECK(eventually([&] {
    return odd.heard("register port=" + std::to_string(b.at().port) + " weight=500 heartbeat=200ms id=" + other);
  }));
  CHECK(eventually([&] { return agent.status()[0].registrations == 2; }));
  CHECK(agent.status()[0].id == other);
  CHECK(agent.id() == id);
}

TEST_CASE("agents: close() waits about two seconds in all, however many balancers do not answer") {
  backend b(greeter("b"));
  // Three balancers that register the agent and never confirm its close.
  std::vector<std::unique_ptr<fake_balancer>> mute;
  std::vector<std::string> addresses;
  for (int i = 0; i < 3; ++i) {
    mute.push_back(std::make_unique<fake_balancer>([](const std::string& line) {
      auto at = line.find(" id=");
      return "ok id=" + (at == std::string::npos ? std::string("0123456789ABCDEF0123456789ABCDEF") : line.substr(at + 4, 32));
    }));
    addresses.push_back(mute.back()->address());
  }
  harmony::client agent(agent_options(addresses, b.at().port));
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] {
    for (const auto& s : agent.status())
      if (!s.registered) return false;
    return true;
  }));
  for (const auto& s : agent.status()) CHECK(s.id == "0123456789ABCDEF0123456789ABCDEF");
  auto start = std::chrono::steady_clock::now();
  REQUIRE_FALSE(agent.close());
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < 4000ms);  // one bound for all three, not one each
  for (auto& f : mute) CHECK(f->heard("close"));
}

TEST_CASE("agents: report weight shifts the split; drain keeps open connections, down and ready") {
  backend mine(greeter("mine")), other(greeter("other"));
  auto o = quiet_options();
  o.persistent = false;
  o.balance = harmony::algorithm::roundrobin;  // exact shares, whatever the teardown overlap
  running_server s(o);
  s.add(other, 500);
  // The report command on a native agent connection of the test's own.
  admin_session raw(admin_of(s));
  std::string reply = raw.call("register port=" + std::to_string(mine.at().port) + " weight=500");
  REQUIRE(reply.rfind("ok id=", 0) == 0);
  auto count = who_serves(s.address(), 20);
  CHECK(count["mine"] == 10);
  CHECK(count["other"] == 10);
  CHECK(raw.call("report weight=1500") == "ok weight=1500\n");
  count = who_serves(s.address(), 40);
  CHECK(count["mine"] == 30);  // 3:1
  CHECK(count["other"] == 10);
  CHECK(raw.call("report state=down") == "ok state=down\n");
  CHECK(who_serves(s.address(), 6)["other"] == 6);
  CHECK(raw.call("close").rfind("ok closed", 0) == 0);

  // The library's agent: set_state, remembered for later registrations.
  harmony::client agent(agent_options({admin_of(s)}, mine.at().port));
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] { return agent.registered(); }));
  std::string id = agent.id();
  auto state = [&] {
    for (const auto& b : listed(s))
      if (b.id == id) return b.state;
    return std::string("gone");
  };
  sock held;
  for (int i = 0; i < 8 && !held; ++i) {
    sock c = connect_to(s.address());
    if (greeted_by(c) == "mine") held = std::move(c);
  }
  REQUIRE(held);
  REQUIRE_FALSE(agent.set_state(harmony::readiness::drain));
  REQUIRE(eventually([&] { return state() == "draining"; }));
  CHECK(who_serves(s.address(), 6)["other"] == 6);
  // The open connection still works both ways.
  REQUIRE(held.send_all("still here"));
  CHECK(held.read_n(10) == "still here");
  held.reset();
  REQUIRE_FALSE(agent.set_state(harmony::readiness::down));
  REQUIRE(eventually([&] { return state() == "down"; }));
  CHECK(who_serves(s.address(), 6)["other"] == 6);
  REQUIRE_FALSE(agent.set_state(harmony::readiness::ready));
  REQUIRE(eventually([&] { return state() == "up"; }));
  CHECK(who_serves(s.address(), 6)["mine"] >= 2);
  CHECK_FALSE(agent.set_maxconn(4));
  CHECK_FALSE(agent.set_state(harmony::readiness::drain));
  REQUIRE(eventually([&] { return state() == "draining"; }));
  REQUIRE_FALSE(agent.close());
  CHECK(state() == "gone");
}

TEST_CASE("agents: the reported state survives a balancer restart and is set before the first registration") {
  backend b(greeter("b"));
  auto o = quiet_options();
  o.admin = free_admin();
  auto co = agent_options({o.admin}, b.at().port);
  co.state = harmony::readiness::drain;
  harmony::client agent(co);
  REQUIRE_FALSE(agent.start());
  {
    running_server s(o);
    REQUIRE(eventually([&] { return only_state(s) == "draining"; }));
    REQUIRE_FALSE(agent.set_state(harmony::readiness::down));
    REQUIRE(eventually([&] { return only_state(s) == "down"; }));
  }
  REQUIRE(eventually([&] { return !agent.registered(); }));
  running_server again(o);
  REQUIRE(eventually([&] { return agent.registered(); }));
  CHECK(eventually([&] { return only_state(again) == "down"; }));
  // Changed while no balancer listens: the next registration carries it.
  REQUIRE_FALSE(agent.set_state(harmony::readiness::ready));
  CHECK(eventually([&] { return only_state(again) == "up"; }));
}
