// harmonyd from the command line: flags, errors, exit codes, signals, and real
// traffic through the daemon and its agent subcommand.
#include "support.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

using namespace test;

namespace {

std::string harmonyd_path() {
  const char* p = std::getenv("HARMONYD");
  return p ? p : "./harmonyd";
}

// The signal that asks the daemon to stop cleanly: SIGTERM, unless
// HARMONYD_STOP_SIGNAL=INT says otherwise (harmonyd.exe under Wine, where a
// SIGTERM ends the program outright and SIGINT arrives as Ctrl-C).
int polite_stop() {
  const char* s = std::getenv("HARMONYD_STOP_SIGNAL");
  return s && std::string(s) == "INT" ? SIGINT : SIGTERM;
}

// A child process we started; killed by its PID when the test ends.
class process {
 public:
  explicit process(std::vector<std::string> args, bool capture = true) {
    args.insert(args.begin(), harmonyd_path());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int out[2] = {-1, -1};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (capture && ::pipe(out) == 0) {
      posix_spawn_file_actions_adddup2(&actions, out[1], 1);
      posix_spawn_file_actions_adddup2(&actions, out[1], 2);
      posix_spawn_file_actions_addclose(&actions, out[0]);
    }
    if (::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    if (out[1] >= 0) ::close(out[1]);
    output_fd_ = out[0];
  }
  ~process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (output_fd_ >= 0) ::close(output_fd_);
  }
  bool started() const { return pid_ > 0; }
  void signal(int s) { ::kill(pid_, s); }
  // The exit code, or -1 if it did not exit within `limit`.
  int wait(std::chrono::milliseconds limit = 5000ms) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }
  std::string output() {
    std::string s;
    if (output_fd_ < 0) return s;
    char b[4096];
    ssize_t k;
    while ((k = ::read(output_fd_, b, sizeof b)) > 0) s.append(b, static_cast<std::size_t>(k));
    return s;
  }

 private:
  pid_t pid_ = -1;
  int output_fd_ = -1;
  bool exited_ = false;
};

std::string free_address() {
  harmony::endpoint at;
  sock probe = listen_on("127.0.0.1", at);
  return at.to_string();
}

bool listening(const std::string& address) { return static_cast<bool>(connect_to(address)); }

}  // namespace

TEST_CASE("harmonyd: --help, --version and bad flags") {
  process help({"--help"});
  CHECK(help.wait() == 0);
  CHECK(help.output().find("--listen HOST:PORT") != std::string::npos);
  process version({"--version"});
  CHECK(version.wait() == 0);
  CHECK(version.output().rfind("harmonyd 0.", 0) == 0);
  struct bad_case {
    std::vector<std::string> args;
    const char* says;
  };
  for (const auto& c : std::vector<bad_case>{
           {{"--bogus"}, "unknown option '--bogus'"},
           {{"--listen", "nowhere"}, "is not HOST:PORT"},
           {{"--listen", "::1:80"}, "is not HOST:PORT"},
           {{"--backend", "127.0.0.1:80,weight=heavy"}, "is not a number"},
           {{"--backend", "127.0.0.1:80,color=red"}, "unknown option 'color=red'"},
           {{"--algorithm", "fastest"}, "unknown algorithm"},
           {{"--concurrency", "-2"}, "is not a number from -1"},
           {{"--host-timeout", "soon"}, "is not a duration"},
           {{"--log-level", "loud"}, "unknown level"},
           {{"--listen"}, "needs a value"},
           {{"agent"}, "--port N is required"},
           {{"agent", "--port", "99999"}, "is not a number from 1 to 65535"},
           {{"agent", "--port", "80", "--ack", "often"}, "is not a duration"},
       }) {
    process p(c.args);
    CHECK(p.wait() == 2);
    std::string out = p.output();
    CHECK_MESSAGE(out.find(c.says) != std::string::npos, out);
  }
  // A port that is taken is a start failure, not a usage error.
  harmony::endpoint taken;
  sock holder = listen_on("127.0.0.1", taken);
  process busy({"--listen", taken.to_string(), "--admin", free_address()});
  CHECK(busy.wait() == 1);
  CHECK(busy.output().find("cannot start") != std::string::npos);
}

TEST_CASE("harmonyd: static backends split 2:1 byte for byte, IPv6 too, and SIGTERM stops it") {
  backend heavy(echo), light(echo);
  std::string listen = free_address(), admin = free_address();
  process d({"--listen", listen, "--admin", admin, "--backend", heavy.address() + ",weight=1000", "--backend",
             light.address() + ",weight=500", "--no-persistent", "--log-level", "warn"});
  // The admin port opens after the listen port; probing the listen port would be proxied.
  REQUIRE(eventually([&] { return listening(admin); }));
  std::string data = random_bytes(200000, 9);
  for (int i = 0; i < 30; ++i) CHECK(round_trip(listen, data) == data);
  CHECK(heavy.accepted() == 20);
  CHECK(light.accepted() == 10);
  d.signal(polite_stop());
  CHECK(d.wait() == 0);
  CHECK_FALSE(listening(listen));

  backend six(echo, "::1");
  harmony::endpoint v6;
  { sock probe = listen_on("::1", v6); }
  process d6({"--listen", v6.to_string(), "--admin", "none", "--backend", six.address()});
  REQUIRE(eventually([&] { return listening(v6.to_string()); }));
  CHECK(round_trip(v6.to_string(), "six") == "six");
  d6.signal(SIGINT);
  CHECK(d6.wait() == 0);
}

TEST_CASE("harmonyd: legacy agents at 1000 and 500 get 2:1; close moves all; silence gives the unavailable text") {
  backend one(named("one")), two(named("two"));
  std::string listen = free_address(), admin = free_address();
  process d({"--listen", listen, "--admin", admin, "--no-persistent", "--host-timeout", "1s", "--unavailable",
             "no backend\n", "--log-level", "warn"});
  REQUIRE(eventually([&] { return listening(admin); }));
  std::string id1 = legacy_register(admin, 1000, one.at().port);
  auto registered = std::chrono::steady_clock::now();  // no later than two's registration
  std::string id2 = legacy_register(admin, 500, two.at().port);
  REQUIRE(id1.size() == 32);
  auto count = tally(listen, 30);
  CHECK(count["one"] == 20);
  CHECK(count["two"] == 10);
  sock closer = connect_to(admin);
  std::string close = "CLOSE:" + id1 + ":ID:" + id1 + ":";
  closer.send_all(close);
  CHECK(closer.read_n(close.size()) == close);
  count = tally(listen, 6);
  CHECK(count["two"] == 6);
  // No more acks: after the host timeout nobody is eligible.
  admin_session op(admin);
  REQUIRE(eventually([&] {
    std::string list = op.call("list");
    return list.find("id=" + id2) != std::string::npos && list.find("state=expired") != std::string::npos;
  }, 5000ms));
  CHECK(std::chrono::steady_clock::now() - registered >= 995ms);
  CHECK(round_trip(listen, "x") == "no backend\n");
  legacy_ack(admin, id2);
  CHECK(name_of(round_trip(listen, "x")) == "two");
}

TEST_CASE("harmonyd agent: registers, carries traffic, and deregisters on SIGTERM") {
  backend b(named("b"));
  std::string listen = free_address(), admin = free_address();
  process d({"--listen", listen, "--admin", admin, "--unavailable", "none\\n", "--requeue", "0", "--concurrency",
             "5", "--queue-timeout", "2s", "--connect-timeout", "1s", "--idle-timeout", "1m", "--algorithm",
             "roundrobin", "--persistent", "--log-level", "error"});
  REQUIRE(eventually([&] { return listening(admin); }));
  process agent({"agent", "--balancer", admin, "--port", std::to_string(b.at().port), "--weight", "700", "--ack",
                 "1s", "--log-level", "warn"});
  REQUIRE(eventually([&] { return name_of(round_trip(listen, "x")) == "b"; }));
  admin_session op(admin);
  std::string list = op.call("list");
  CHECK(list.find("weight=700") != std::string::npos);
  CHECK(op.call("concurrency") == "ok concurrency=5\n");
  agent.signal(polite_stop());
  CHECK(agent.wait() == 0);
  CHECK(op.call("list").find("ok backends=0") != std::string::npos);
  CHECK(round_trip(listen, "x") == "none\n");
}
