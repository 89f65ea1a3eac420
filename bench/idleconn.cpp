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

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "loadgen.hpp"

using namespace loadgen;

namespace {

enum class State { connecting, awaiting_response, idle, failed };

struct Conn {
  int fd = -1;
  State state = State::connecting;
  size_t got = 0;  // response bytes seen
};

}  // namespace

int main(int argc, char** argv) {
  Target target;
  if (!target_args(argc, argv, 5, "[WINDOW] [SETTLE_MS] [DEADLINE_S]", target)) return 2;
  const int count = target.count;
  const int window = int_arg(argc, argv, 5, 64);
  const int settle_ms = int_arg(argc, argv, 6, 1000);
  const int deadline_s = int_arg(argc, argv, 7, 90);
  if (count <= 0 || window <= 0 || target.port <= 0) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }

  if (!nofile_enough(raise_nofile(), count, "")) return 2;

  sockaddr_in addr;
  if (!ipv4_address(target.host, target.port, addr)) return 2;

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(deadline_s);
  const long before = rss_sum(target.pids);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Conn> conns(static_cast<size_t>(count));
  int started = 0, in_flight = 0, idle = 0, failed = 0;
  std::vector<epoll_event> events(256);
  char buf[4096];
  const size_t response_len = std::strlen("HTTP/1.1 200 OK\r\n");  // minimum; see below

  auto fail = [&](Conn& c) {
    unwatch_close(ep, c.fd);
    c.state = State::failed;
    ++failed;
    --in_flight;
  };

  // A connection stays in flight until its response, so the window also
  // bounds the requests outstanding. No rate limit: the window suffices here.
  Pacer pacer(window, 0);
  while ((idle + failed) < count && Clock::now() < deadline) {
    pacer.start_connects(ep, addr, started, count, in_flight, [&](int slot, int fd) {
      Conn& c = conns[static_cast<size_t>(slot)];
      c.fd = fd;
      ++in_flight;
      if (fd < 0) fail(c);
    });
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint32_t slot = events[i].data.u32;
      Conn& c = conns[slot];
      if (c.state == State::connecting) {
        if (!connected(c.fd, events[i].events) || !send_request(c.fd)) {
          fail(c);
          continue;
        }
        c.state = State::awaiting_response;
        watch(ep, EPOLL_CTL_MOD, c.fd, slot, EPOLLIN | EPOLLRDHUP);
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
          watch(ep, EPOLL_CTL_MOD, c.fd, slot, EPOLLRDHUP);
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
  const double open_seconds = seconds_since(start);

  // Settle, watching for early closes.
  int closed_early = 0;
  poll_for(ep, events, settle_ms, [&](uint32_t slot) {
    Conn& c = conns[slot];
    if (c.state == State::idle) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
      c.state = State::failed;
      ++closed_early;
      --idle;
    }
  });
  const long after = rss_sum(target.pids);
  double per_conn = -1;
  if (!target.pids.empty() && before >= 0 && after >= 0 && idle > 0) per_conn = static_cast<double>(after - before) / idle;

  std::printf("opened=%d failed=%d closed_early=%d rss_before_kb=%ld rss_after_kb=%ld kb_per_conn=%.3f open_seconds=%.2f\n",
              idle, failed, closed_early, before, after, per_conn, open_seconds);
  std::fflush(stdout);

  for (auto& c : conns) {
    if (c.fd >= 0) close(c.fd);
  }
  close(ep);
  return (idle == count) ? 0 : 1;
}
