// bench/idleconn.cpp - memory per idle proxied connection.
//
//   idleconn HOST PORT COUNT PIDS [WINDOW] [SETTLE_MS] [DEADLINE_S]
//
// PIDS is a comma-separated list of process ids whose VmRSS is summed (the
// processes of the proxy under test; "0" means none, for the direct run).
//
// 1. reads the proxies' VmRSS (before);
// 2. opens COUNT TCP connections to HOST:PORT with at most WINDOW connects
//    in flight (paced, so no listen backlog overflows and no SYN is retried),
//    sends one keep-alive HTTP request on each and waits for its response, so
//    each connection is known to be proxied end to end and then left idle;
// 3. waits SETTLE_MS, checks that no connection was closed by the far side,
//    reads VmRSS again (after) and prints one line of key=value pairs:
//    opened failed closed_early rss_before_kb rss_after_kb kb_per_conn
//    open_seconds;
// 4. closes every connection.
// Everything is bounded by DEADLINE_S (default 90 s). Exit status 0 when all
// COUNT connections were opened and stayed open, 1 otherwise.
//
// Build: g++ -O2 -std=c++17 -o idleconn idleconn.cpp

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

enum class State { connecting, awaiting_response, idle, failed };

struct Conn {
  int fd = -1;
  State state = State::connecting;
  size_t got = 0;  // response bytes seen
};

const char kRequest[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

long rss_kb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.compare(0, 6, "VmRSS:") == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

long rss_sum(const std::vector<int>& pids) {
  long sum = 0;
  for (int pid : pids) {
    long r = rss_kb(pid);
    if (r < 0) return -1;
    sum += r;
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s HOST PORT COUNT PIDS [WINDOW] [SETTLE_MS] [DEADLINE_S]\n", argv[0]);
    return 2;
  }
  const char* host = argv[1];
  const int port = std::atoi(argv[2]);
  const int count = std::atoi(argv[3]);
  std::vector<int> pids;
  {
    std::stringstream ss(argv[4]);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
      int p = std::atoi(tok.c_str());
      if (p > 0) pids.push_back(p);
    }
  }
  const int window = argc > 5 ? std::atoi(argv[5]) : 64;
  const int settle_ms = argc > 6 ? std::atoi(argv[6]) : 1000;
  const int deadline_s = argc > 7 ? std::atoi(argv[7]) : 90;
  if (count <= 0 || window <= 0 || port <= 0) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }

  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < static_cast<rlim_t>(count) + 16) {
      std::fprintf(stderr, "descriptor limit %llu too low for %d connections\n",
                   static_cast<unsigned long long>(rl.rlim_cur), count);
      return 2;
    }
  }

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    std::fprintf(stderr, "bad host %s\n", host);
    return 2;
  }

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(deadline_s);
  const long before = rss_sum(pids);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Conn> conns(static_cast<size_t>(count));
  int started = 0, in_flight = 0, idle = 0, failed = 0;
  std::vector<epoll_event> events(256);
  char buf[4096];
  const size_t response_len = std::strlen("HTTP/1.1 200 OK\r\n");  // minimum; see below

  auto fail = [&](Conn& c) {
    if (c.fd >= 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
    c.state = State::failed;
    ++failed;
    --in_flight;
  };

  while ((idle + failed) < count && Clock::now() < deadline) {
    // Top up the window.
    while (started < count && in_flight < window) {
      Conn& c = conns[static_cast<size_t>(started)];
      c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ++in_flight;
      if (c.fd < 0) {
        fail(c);
        ++started;
        continue;
      }
      int r = connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      if (r < 0 && errno != EINPROGRESS) {
        fail(c);
        ++started;
        continue;
      }
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.u32 = static_cast<uint32_t>(started);
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
      ++started;
    }
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      Conn& c = conns[events[i].data.u32];
      if (c.state == State::connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events[i].events & (EPOLLERR | EPOLLHUP))) {
          fail(c);
          continue;
        }
        if (send(c.fd, kRequest, sizeof kRequest - 1, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof kRequest - 1)) {
          fail(c);
          continue;
        }
        c.state = State::awaiting_response;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u32 = events[i].data.u32;
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
      } else if (c.state == State::awaiting_response) {
        ssize_t r = recv(c.fd, buf, sizeof buf, 0);
        if (r <= 0) {
          if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          fail(c);
          continue;
        }
        c.got += static_cast<size_t>(r);
        // The bench backend answers with a fixed response that ends in "hello".
        if (c.got >= response_len && r >= 5 && std::memcmp(buf + r - 5, "hello", 5) == 0) {
          c.state = State::idle;
          ++idle;
          --in_flight;
          // Keep watching for an early close by the far side.
          epoll_event ev{};
          ev.events = EPOLLRDHUP;
          ev.data.u32 = events[i].data.u32;
          epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
        }
      } else if (c.state == State::idle) {
        // Only EPOLLRDHUP/ERR/HUP are watched: the far side gave up.
        epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        c.state = State::failed;
        --idle;
        ++failed;
      }
    }
  }
  // Connections still in flight at the deadline count as failed.
  for (auto& c : conns) {
    if (c.state == State::connecting || c.state == State::awaiting_response) fail(c);
  }
  const double open_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // Settle, watching for early closes.
  int closed_early = 0;
  const auto settle_end = Clock::now() + std::chrono::milliseconds(settle_ms);
  while (Clock::now() < settle_end) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) {
      Conn& c = conns[events[i].data.u32];
      if (c.state == State::idle) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        c.state = State::failed;
        ++closed_early;
        --idle;
      }
    }
  }
  const long after = rss_sum(pids);
  double per_conn = -1;
  if (!pids.empty() && before >= 0 && after >= 0 && idle > 0) per_conn = static_cast<double>(after - before) / idle;

  std::printf("opened=%d failed=%d closed_early=%d rss_before_kb=%ld rss_after_kb=%ld kb_per_conn=%.3f open_seconds=%.2f\n",
              idle, failed, closed_early, before, after, per_conn, open_seconds);
  std::fflush(stdout);

  for (auto& c : conns) {
    if (c.fd >= 0) close(c.fd);
  }
  close(ep);
  return (idle == count) ? 0 : 1;
}
