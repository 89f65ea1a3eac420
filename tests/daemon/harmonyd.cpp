// harmonyd end to end: the daemon program between clients and backends of this
// test process, on loopback. The program under test is $HARMONYD, a command line
// split at spaces (default ./harmonyd); `make test-windows` sets it to
// "tests/wine-run harmonyd.exe", so that the Windows daemon runs under Wine with
// the clients and backends on the Linux side. A POSIX-only driver, a program of
// its own: it compiles the library (for the helpers' address parsing) itself.
#define HARMONY_IMPLEMENTATION
#include "../support.hpp"

#include <csignal>
#include <cstdlib>
#include <sstream>

#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

using namespace test;

namespace {

std::vector<std::string> daemon_command() {
  const char* text = std::getenv("HARMONYD");
  std::istringstream words(text && *text ? text : "./harmonyd");
  std::vector<std::string> out;
  for (std::string w; words >> w;) out.push_back(w);
  return out;
}

// A running daemon: its PID (the program itself, so that signals reach it) and
// what it writes to stdout and stderr, with CRLF turned into LF.
class daemon_process {
 public:
  explicit daemon_process(const std::vector<std::string>& args) {
    std::vector<std::string> all = daemon_command();
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int out[2];
    REQUIRE(::pipe(out) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    ::setenv("WINE_RUN_EXEC", "1", 1);
    int rc = posix_spawnp(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    read_fd_ = out[0];
    REQUIRE_MESSAGE(rc == 0, "cannot start " << all[0]);
  }
  ~daemon_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (read_fd_ >= 0) ::close(read_fd_);
  }

  // Waits for output containing `text`; returns the line it is on.
  std::string wait_for(const std::string& text, std::chrono::milliseconds limit = 30000ms) {
    auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      std::size_t at = output_.find(text);
      if (at != std::string::npos) {
        std::size_t begin = output_.rfind('\n', at);
        begin = begin == std::string::npos ? 0 : begin + 1;
        return output_.substr(begin, output_.find('\n', at) - begin);
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !read_some(left)) return {};
    }
  }
  // Sends SIGINT (Ctrl-C under Wine) and returns the exit code, or -1.
  int interrupt_and_wait(std::chrono::milliseconds limit = 10000ms) {
    ::kill(pid_, SIGINT);
    return wait_exit(limit);
  }
  int wait_exit(std::chrono::milliseconds limit = 10000ms) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        while (read_some(100ms)) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      read_some(20ms);
    }
    return -1;
  }
  const std::string& output() const { return output_; }

 private:
  bool read_some(std::chrono::milliseconds limit) {
    pollfd p{read_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return false;
    char buf[4096];
    ssize_t n = ::read(read_fd_, buf, sizeof buf);
    if (n <= 0) return false;
    for (ssize_t i = 0; i < n; ++i)
      if (buf[i] != '\r') output_.push_back(buf[i]);
    return true;
  }
  pid_t pid_ = -1;
  int read_fd_ = -1;
  std::string output_;
};

// The address in "listening on 127.0.0.1:PORT (...)".
std::string listen_address(daemon_process& d) {
  std::string line = d.wait_for("listening on ");
  REQUIRE_MESSAGE(!line.empty(), "no 'listening on' line; output:\n" << d.output());
  std::size_t at = line.find("listening on ") + 13;
  return line.substr(at, line.find(' ', at) - at);
}

}  // namespace

TEST_CASE("harmonyd relays bytes exactly both ways between clients and backends") {
  backend b1(echo), b2(echo);
  daemon_process d({"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backend", b1.address(), "--backend",
                    b2.address() + ",weight=1000", "--no-persistent", "--log-level", "info"});
  std::string address = listen_address(d);
  constexpr int clients = 8;
  constexpr std::size_t size = 2 << 20;
  std::atomic<int> exact{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&, i] {
      std::string data = random_bytes(size, static_cast<unsigned>(i + 11));
      sock c = connect_to(address);
      if (!c) return;
      c.set_timeout(30s);
      std::thread writer([&] {
        c.send_all(data);
        c.shutdown_send();
      });
      std::string back;
      bool eof = c.read_to_eof(back);
      writer.join();
      if (eof && back == data) ++exact;
    });
  for (auto& t : threads) t.join();
  CHECK(exact == clients);
  CHECK(b1.accepted() > 0);
  CHECK(b2.accepted() > 0);
  // A half-closed client still gets the whole answer.
  sock c = connect_to(address);
  REQUIRE(c);
  CHECK(c.send_all("half"));
  c.shutdown_send();
  CHECK(c.read_all() == "half");
  CHECK(d.interrupt_and_wait() == 0);
}

TEST_CASE("harmonyd stops on an interrupt and says why") {
  backend b(echo);
  daemon_process d({"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backend", b.address()});
  std::string address = listen_address(d);
  CHECK(exchange(address, "still there") == "still there");
  CHECK(d.interrupt_and_wait() == 0);
  CHECK(d.output().find("stopping on") != std::string::npos);
  CHECK_FALSE(connect_to(address));
}

TEST_CASE("harmonyd agent registers a backend with a balancer and leaves on an interrupt") {
  backend b(named("served"));
  auto o = quiet_options();
  running_server s(o);
  std::string admin = s.srv.admin_endpoint().to_string();
  daemon_process d({"agent", "--balancer", admin, "--port", std::to_string(b.at().port), "--weight", "700",
                    "--host", "127.0.0.1", "--ack", "1s"});
  auto eligible = [&] {
    auto list = s.srv.backends();
    return list.size() == 1 && list.front().eligible && list.front().weight == 700;
  };
  REQUIRE_MESSAGE(eventually(eligible, 30000ms), "agent output:\n" << d.output());
  CHECK(name_of(exchange(s.address(), "via the agent")) == "served");
  CHECK(d.interrupt_and_wait() == 0);
  CHECK(eventually([&] {
    auto list = s.srv.backends();
    return list.empty() || !list.front().eligible;
  }));
}

TEST_CASE("harmonyd has the same command line: --version, --help, bad options") {
  {
    daemon_process d({"--version"});
    CHECK(d.wait_exit() == 0);
    CHECK(d.output().rfind("harmonyd ", 0) == 0);
  }
  {
    daemon_process d({"--help"});
    CHECK(d.wait_exit() == 0);
    CHECK(d.output().find("--listen HOST:PORT") != std::string::npos);
  }
  {
    daemon_process d({"--no-such-option"});
    CHECK(d.wait_exit() == 2);
    CHECK(d.output().find("unknown option") != std::string::npos);
  }
  {
    daemon_process d({"--backend", "nowhere"});
    CHECK(d.wait_exit() == 2);
  }
  {
    daemon_process d({"agent", "--balancer", "127.0.0.1:1"});  // no --port
    CHECK(d.wait_exit() == 2);
    CHECK(d.output().find("--port") != std::string::npos);
  }
}
