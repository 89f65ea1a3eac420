// The authenticated admin port over real sockets: the hello nonce and the HMAC
// proof, refusals, replays, what an agent may change, the legacy dialect with a
// secret, the agent (harmony::client) with a secret, and `harmonyd ctl`.
#include "support.hpp"

#include <cstdio>
#include <fstream>

#if !defined(_WIN32)
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

using namespace test;

namespace {

const std::string secret = "correct horse battery staple";

// A balancer with a secret whose log lines are kept, to wait on.
struct secured {
  explicit secured(std::vector<std::string> allow_legacy = {}, const char* admin = "127.0.0.1:0")
      : srv(options(std::move(allow_legacy), admin)) {}
  harmony::server_options options(std::vector<std::string> allow_legacy, const char* admin) {
    auto o = quiet_options();
    o.admin = admin;
    o.persistent = false;
    o.admin_secret = secret;
    o.allow_legacy = std::move(allow_legacy);
    o.level = harmony::log_level::debug;
    o.log = [this](harmony::log_level, std::string_view m) {
      std::lock_guard<std::mutex> lock(mutex);
      logged.emplace_back(m);
    };
    return o;
  }
  bool logged_line(const std::string& part) {
    return eventually([&] {
      std::lock_guard<std::mutex> lock(mutex);
      for (const auto& l : logged)
        if (l.find(part) != std::string::npos) return true;
      return false;
    });
  }
  std::string admin() const { return srv.srv.admin_endpoint().to_string(); }

  std::mutex mutex;
  std::vector<std::string> logged;
  running_server srv;
};

std::string nonce_of(const std::string& hello) {
  auto at = hello.find("nonce=");
  if (at == std::string::npos) return {};
  return hello.substr(at + 6, hello.find_first_of(" \r\n", at) - at - 6);
}

// hello, then the proof for its nonce with `key`; the reply to auth.
std::string login(admin_session& s, const std::string& key = secret, std::string* proof_out = nullptr) {
  std::string nonce = nonce_of(s.call("hello harmony/1"));
  if (nonce.size() != 64) return "<no nonce>";
  std::string proof = harmony::admin_proof(key, nonce);
  if (proof_out) *proof_out = proof;
  return s.call("auth " + proof);
}

// The session's connection is closed by the balancer (EOF within the timeout).
bool closed_by_balancer(admin_session& s) { return s.read_reply() == "<eof>"; }

}  // namespace

TEST_CASE("auth: the right secret opens the admin port; a wrong proof or none gets an error line and the close") {
  backend b(named("b"));
  secured s;
  std::string port = std::to_string(b.at().port);
  {
    admin_session ok(s.admin());
    REQUIRE(ok);
    CHECK(login(ok) == "ok authenticated\n");
    CHECK(ok.call("list") == "ok backends=0\n");
    CHECK(ok.call("register port=" + port).rfind("ok id=", 0) == 0);
    CHECK(name_of(round_trip(s.srv.address(), "x")) == "b");
  }
  CHECK(eventually([&] { return s.srv.srv.backends().at(0).state == "offline"; }));
  const auto before = s.srv.srv.backends();
  // A wrong secret: one error line, then the balancer closes.
  admin_session wrong(s.admin());
  CHECK(login(wrong, "incorrect horse") == "err auth-failed wrong proof for the nonce\n");
  CHECK(closed_by_balancer(wrong));
  CHECK(s.logged_line("wrong authentication proof"));
  // No proof at all: every command but the handshake is refused, and the connection ends.
  for (const std::string& command : std::vector<std::string>{"list", "register port=" + port, "drain " + before.at(0).id, "stats", "ping"}) {
    CAPTURE(command);
    admin_session none(s.admin());
    CHECK(none.call(command) == "err auth-required a secret is set: send 'hello', then 'auth PROOF' for its nonce\n");
    CHECK(closed_by_balancer(none));
  }
  // Nothing changed.
  auto after = s.srv.srv.backends();
  REQUIRE(after.size() == 1);
  CHECK_FALSE(after[0].draining);
  // hello without a secret on the balancer says so, and every command works at once.
  running_server open(quiet_options());
  admin_session plain(open.srv.admin_endpoint().to_string());
  CHECK(plain.call("hello harmony/1").find(" auth=none\n") != std::string::npos);
  CHECK(plain.call("list") == "ok backends=0\n");
}

TEST_CASE("auth: a proof recorded on one connection does not open another") {
  backend b(named("b"));
  secured s;
  admin_session first(s.admin());
  std::string recorded;
  REQUIRE(login(first, secret, &recorded) == "ok authenticated\n");
  // The same proof on a new connection: its nonce differs, the proof is refused.
  admin_session second(s.admin());
  std::string hello = second.call("hello harmony/1");
  REQUIRE(nonce_of(hello).size() == 64);
  CHECK(second.call("auth " + recorded) == "err auth-failed wrong proof for the nonce\n");
  CHECK(closed_by_balancer(second));
  // The whole exchange replayed byte for byte on a new connection registers nothing.
  sock replay = connect_to(s.admin());
  REQUIRE(replay);
  replay.set_timeout(3s);
  replay.send_all("hello harmony/1\nauth " + recorded + "\nregister port=" + std::to_string(b.at().port) + "\n");
  std::string heard = replay.read_all();  // to the balancer's close
  CHECK(heard.find("err auth-failed") != std::string::npos);
  CHECK(heard.find("ok id=") == std::string::npos);
  CHECK(s.srv.srv.backends().empty());
  // The first connection, authenticated, still works.
  CHECK(first.call("stats").rfind("ok accepted=", 0) == 0);
}

TEST_CASE("auth: an authenticated agent cannot drain, re-weight or remove another backend") {
  backend one(named("one")), two(named("two"));
  secured s;
  admin_session a(s.admin()), b(s.admin()), op(s.admin());
  REQUIRE(login(a) == "ok authenticated\n");
  REQUIRE(login(b) == "ok authenticated\n");
  REQUIRE(login(op) == "ok authenticated\n");
  std::string ra = a.call("register port=" + std::to_string(one.at().port) + " weight=300");
  std::string rb = b.call("register port=" + std::to_string(two.at().port) + " weight=400");
  REQUIRE(ra.rfind("ok id=", 0) == 0);
  REQUIRE(rb.rfind("ok id=", 0) == 0);
  std::string id_a = ra.substr(6, 32);
  const std::string forbidden = "err forbidden an agent's connection changes only its own backend\n";
  for (const std::string& command : std::vector<std::string>{"drain " + id_a, "set-weight " + id_a + " 1", "remove " + id_a,
                                     "undrain " + id_a, "add 127.0.0.1:9", "concurrency 0"}) {
    CAPTURE(command);
    CHECK(b.call(command) == forbidden);
  }
  for (const auto& info : s.srv.srv.backends()) {
    CHECK_FALSE(info.draining);
    CHECK(info.weight == (info.id == id_a ? 300 : 400));
  }
  CHECK(s.srv.srv.backends().size() == 2);
  CHECK(b.call("weight 450") == "ok weight=450\n");  // its own, yes
  // The operator (authenticated, no backend of its own) may.
  CHECK(op.call("drain " + id_a) == "ok\n");
  CHECK(eventually([&] {
    for (const auto& info : s.srv.srv.backends())
      if (info.id == id_a) return info.draining;
    return false;
  }));
}

TEST_CASE("auth: with a secret the legacy dialect is refused, except from an allowed block") {
  backend b(named("b"));
  std::string request = "NID::BAL:1000:SPORT:" + std::to_string(b.at().port) + ":";
  {
    secured s;
    bool closed = false;
    std::string reply = admin_exchange(s.admin(), {request}, 1000, &closed);
    CHECK(reply == "ERR:the legacy dialect is refused here (the admin port needs a secret):");
    CHECK(closed);
    CHECK(s.srv.srv.backends().empty());
    CHECK(s.logged_line("legacy agent from 127.0.0.1"));
  }
  {
    secured s({"10.0.0.0/8", "::1", "127.0.0.2"});  // none holds 127.0.0.1
    bool closed = false;
    CHECK(admin_exchange(s.admin(), {request}, 1000, &closed).rfind("ERR:", 0) == 0);
    CHECK(closed);
    CHECK(s.srv.srv.backends().empty());
  }
  {
    secured s({"10.0.0.0/8", "127.0.0.0/8"});
    std::string id = legacy_register(s.admin(), 1000, b.at().port);
    CHECK(id.size() == 32);
    REQUIRE(s.srv.srv.backends().size() == 1);
    CHECK(s.srv.srv.backends()[0].weight == 1000);
    CHECK(name_of(round_trip(s.srv.address(), "x")) == "b");
    // The native dialect still needs the proof from there.
    admin_session n(s.admin());
    CHECK(n.call("list").rfind("err auth-required", 0) == 0);
  }
  {
    secured s({"::1"}, "[::1]:0");  // an IPv6 peer and a bare IPv6 address
    CHECK(legacy_register(s.admin(), 700, b.at().port).size() == 32);
    CHECK(s.srv.srv.backends().size() == 1);
  }
}

TEST_CASE("auth: harmony::client with the secret registers and gets traffic; with a wrong one it does not") {
  backend b(named("b"));
  secured s;
  harmony::client_options bad;
  bad.balancer = s.admin();
  bad.port = b.at().port;
  bad.secret = "not the secret";
  bad.reconnect_min = harmony::duration(50);
  bad.reconnect_max = harmony::duration(200);
  harmony::client intruder(bad);
  REQUIRE_FALSE(intruder.start());
  CHECK(s.logged_line("wrong authentication proof"));
  CHECK_FALSE(intruder.registered());
  CHECK(s.srv.srv.backends().empty());

  harmony::client_options o = bad;
  o.secret = secret;
  o.weight = 800;
  harmony::client agent(o);
  REQUIRE_FALSE(agent.start());
  REQUIRE(eventually([&] { return agent.registered(); }));
  auto list = s.srv.srv.backends();
  REQUIRE(list.size() == 1);
  CHECK(list[0].weight == 800);
  CHECK(list[0].id == agent.id());
  CHECK(name_of(round_trip(s.srv.address(), "x")) == "b");
  // Its own changes go through on its authenticated connection.
  REQUIRE_FALSE(agent.set_weight(900));
  CHECK(eventually([&] { return s.srv.srv.backends().at(0).weight == 900; }));
  CHECK_FALSE(intruder.registered());
  REQUIRE_FALSE(agent.close());
  CHECK(eventually([&] { return s.srv.srv.backends().empty(); }));
  // An agent without a secret cannot register either; the reason is logged on its side.
  std::mutex m;
  std::vector<std::string> said;
  harmony::client_options none = bad;
  none.secret.clear();
  none.log = [&](harmony::log_level, std::string_view text) {
    std::lock_guard<std::mutex> lock(m);
    said.emplace_back(text);
  };
  harmony::client anonymous(none);
  REQUIRE_FALSE(anonymous.start());
  CHECK(eventually([&] {
    std::lock_guard<std::mutex> lock(m);
    for (const auto& line : said)
      if (line.find("requires a secret") != std::string::npos) return true;
    return false;
  }));
  CHECK(s.srv.srv.backends().empty());
}

TEST_CASE("auth: admin_command does the handshake and tells ok, err and refusals apart") {
  backend b(named("b"));
  secured s;
  std::string reply;
  CHECK_FALSE(harmony::admin_command(s.admin(), "add " + b.address(), &reply, secret));
  CHECK(reply.rfind("ok id=", 0) == 0);
  CHECK_FALSE(harmony::admin_command(s.admin(), "list", &reply, secret));
  CHECK(reply.find("backend id=") == 0);
  CHECK(reply.find("ok backends=1\n") != std::string::npos);
  CHECK(harmony::admin_command(s.admin(), "list", &reply) == harmony::errc::unauthorized);
  CHECK(reply.rfind("err auth-required", 0) == 0);
  CHECK(harmony::admin_command(s.admin(), "list", &reply, "wrong") == harmony::errc::unauthorized);
  CHECK(reply.rfind("err auth-failed", 0) == 0);
  CHECK(harmony::admin_command(s.admin(), "drain nobody", &reply, secret) == harmony::errc::protocol);
  CHECK(reply.rfind("err unknown-backend", 0) == 0);
  CHECK(harmony::admin_command("127.0.0.1:" + std::to_string(dead_port()), "list", &reply, secret) ==
        std::errc::connection_refused);
  CHECK(harmony::admin_command(s.admin(), "list\nremove x", &reply, secret) == harmony::errc::bad_option);
}

#if !defined(_WIN32)
namespace {

std::string harmonyd_path() {
  const char* p = std::getenv("HARMONYD");
  return p ? p : "./harmonyd";
}

// Runs harmonyd with `args` (bounded by timeout(1)); its exit code and everything it wrote.
std::pair<int, std::string> run_harmonyd(const std::string& args) {
  std::string command = "timeout 20 " + harmonyd_path() + " " + args + " 2>&1";
  std::FILE* f = ::popen(command.c_str(), "r");
  if (!f) return {-1, "<popen failed>"};
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  int status = ::pclose(f);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A file with `content` and `mode`, removed at the end.
struct temp_file {
  temp_file(const std::string& content, mode_t mode = 0600) {
    char name[] = "/tmp/harmony-auth-XXXXXX";
    int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    path = name;
    REQUIRE(::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    ::close(fd);
    ::chmod(name, mode);
  }
  ~temp_file() { ::unlink(path.c_str()); }
  std::string path;
};

std::string free_address() {
  harmony::endpoint at;
  sock probe = listen_on("127.0.0.1", at);
  return at.to_string();
}

}  // namespace

TEST_CASE("auth: harmonyd ctl with and without the secret") {
  backend b(named("b"));
  secured s;
  temp_file key(secret + "\n");  // the trailing newline is not part of the secret
  std::string admin = "--admin " + s.admin();
  auto added = run_harmonyd("ctl " + admin + " --secret-file " + key.path + " add " + b.address() + " weight=700");
  CHECK(added.first == 0);
  CHECK_MESSAGE(added.second.rfind("ok id=", 0) == 0, added.second);
  auto listed = run_harmonyd("ctl " + admin + " --secret-file " + key.path + " list");
  CHECK(listed.first == 0);
  CHECK(listed.second.find("weight=700") != std::string::npos);
  CHECK(listed.second.find("ok backends=1") != std::string::npos);
  std::string id = s.srv.srv.backends().at(0).id;
  CHECK(run_harmonyd("ctl " + admin + " --secret-file " + key.path + " drain " + id).first == 0);
  CHECK(s.srv.srv.backends().at(0).draining);
  // Without the secret, or with a wrong one: the balancer's error, exit 1, nothing done.
  auto anonymous = run_harmonyd("ctl " + admin + " undrain " + id);
  CHECK(anonymous.first == 1);
  CHECK(anonymous.second.find("err auth-required") != std::string::npos);
  temp_file wrong("guess\n");
  auto guessed = run_harmonyd("ctl " + admin + " --secret-file " + wrong.path + " undrain " + id);
  CHECK(guessed.first == 1);
  CHECK(guessed.second.find("err auth-failed") != std::string::npos);
  CHECK(s.srv.srv.backends().at(0).draining);
  // An err reply is exit 1; a balancer that cannot be reached, exit 3.
  auto unknown = run_harmonyd("ctl " + admin + " --secret-file " + key.path + " frobnicate");
  CHECK(unknown.first == 1);
  CHECK(unknown.second.find("err unknown-command") != std::string::npos);
  auto away = run_harmonyd("ctl --admin 127.0.0.1:" + std::to_string(dead_port()) + " list");
  CHECK(away.first == 3);
  CHECK(away.second.find("cannot reach") != std::string::npos);
  // A balancer without a secret: ctl works with or without one.
  running_server open(quiet_options());
  CHECK(run_harmonyd("ctl --admin " + open.srv.admin_endpoint().to_string() + " stats").first == 0);
  CHECK(run_harmonyd("ctl --admin " + open.srv.admin_endpoint().to_string() + " --secret-file " + key.path + " stats")
            .first == 0);
}

TEST_CASE("auth: harmonyd --secret-file and --allow-legacy, and their errors") {
  temp_file key(secret + "\n");
  temp_file empty("\n");
  temp_file shared(secret, 0644);
  struct bad_case {
    std::string args, says;
  };
  for (const auto& c : std::vector<bad_case>{
           {"--secret-file /nonexistent/secret", "harmonyd: --secret-file: cannot read '/nonexistent/secret'"},
           {"--secret-file " + empty.path, "harmonyd: --secret-file: '" + empty.path + "' is empty"},
           {"agent --port 80 --secret-file " + empty.path, "harmonyd: --secret-file: '" + empty.path + "' is empty"},
           {"ctl --secret-file /nonexistent/secret list", "harmonyd: --secret-file: cannot read"},
           {"--allow-legacy 10.0.0.0/33", "harmonyd: --allow-legacy: '10.0.0.0/33' is not an address or CIDR block"},
           {"--allow-legacy somehost", "harmonyd: --allow-legacy: 'somehost' is not an address or CIDR block"},
           {"ctl --admin nowhere list", "harmonyd: --admin: 'nowhere' is not HOST:PORT"},
           {"ctl", "harmonyd: ctl: a command is required"},
       }) {
    auto r = run_harmonyd(c.args);
    CAPTURE(c.args);
    CHECK(r.first == 2);
    CHECK_MESSAGE(r.second.find(c.says) != std::string::npos, r.second);
  }
  // A file other users can read is taken, with a warning.
  auto warned = run_harmonyd("ctl --admin 127.0.0.1:" + std::to_string(dead_port()) + " --secret-file " + shared.path +
                             " list");
  CHECK(warned.second.find("is readable by other users") != std::string::npos);

  // The daemon with both: ctl needs the secret, a legacy agent from 127.0.0.1 is let in.
  backend b(named("b"));
  std::string admin = free_address(), listen = free_address();
  std::string command = harmonyd_path() + " --listen " + listen + " --admin " + admin + " --secret-file " + key.path +
                        " --allow-legacy 127.0.0.0/8 --log-level warn >/dev/null 2>&1 & echo $!";
  std::FILE* f = ::popen(command.c_str(), "r");
  REQUIRE(f);
  long pid = 0;
  REQUIRE(std::fscanf(f, "%ld", &pid) == 1);
  ::pclose(f);
  REQUIRE(pid > 0);
  struct killer {
    pid_t pid;
    ~killer() {
      ::kill(pid, SIGKILL);
    }
  } stop{static_cast<pid_t>(pid)};
  REQUIRE(eventually([&] { return static_cast<bool>(connect_to(admin)); }));
  CHECK(run_harmonyd("ctl --admin " + admin + " list").first == 1);
  CHECK(legacy_register(admin, 1000, b.at().port).size() == 32);
  auto listed = run_harmonyd("ctl --admin " + admin + " --secret-file " + key.path + " list");
  CHECK(listed.first == 0);
  CHECK(listed.second.find("weight=1000") != std::string::npos);
  CHECK(eventually([&] { return name_of(round_trip(listen, "x")) == "b"; }));
}
#endif
