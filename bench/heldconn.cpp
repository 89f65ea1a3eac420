// bench/heldconn.cpp - many connections held open at once through a proxy, then served.
//
//   heldconn HOST PORT COUNT PIDS BACKEND_PORTS [WINDOW] [RATE] [DEADLINE_S]
//
// PIDS: comma-separated process ids of the proxy (VmRSS summed, descriptors
// counted); "0" for none. BACKEND_PORTS: comma-separated ports of the HTTP
// backends behind the proxy; "0" to skip the end-to-end check below.
//
// 1. raises its own descriptor soft limit to the hard limit; reads the proxy's
//    VmRSS (rss_idle_kb);
// 2. opens COUNT TCP connections to HOST:PORT, paced: at most WINDOW connects
//    in flight (default 64) and at most RATE new connects per second (default
//    4000), so that neither the proxy's listen backlog nor the backends'
//    overflow (a dropped SYN costs a 1 s retry). Nothing is sent yet;
// 3. holds them all: waits until the proxy has a backend connection for each
//    (ESTABLISHED sockets towards BACKEND_PORTS in /proc/net/tcp), at most 15 s
//    after the last connect; then reads the proxy's VmRSS (rss_held_kb) and
//    open descriptors (proxy_fds);
// 4. sends one keep-alive HTTP/1.1 request on every connection still open
//    and reads each full response (status line, headers, Content-Length body);
// 5. after 0.5 s, counts the connections still open, reads VmRSS again
//    (rss_served_kb), prints one line of key=value pairs, closes everything.
//
// A connection closed by the far side at any point is not served. Everything
// is bounded by DEADLINE_S (default 120 s) and by the counts. Exit status 0
// when all COUNT connections were served and stayed open, 1 otherwise.
//
// Build: g++ -O2 -std=c++17 -o heldconn heldconn.cpp

#include <dirent.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "loadgen.hpp"

using namespace loadgen;

namespace {

enum class State { unstarted, connecting, held, awaiting, served, closed };

struct Conn {
  int fd = -1;
  State state = State::unstarted;
  std::string in;  // response bytes so far
};

// Open descriptors of the processes (entries of /proc/PID/fd), -1 if unreadable.
long fd_count(const std::vector<int>& pids) {
  long sum = 0;
  for (int pid : pids) {
    DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
    if (!d) return -1;
    long n = 0;
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
    sum += n;
  }
  return pids.empty() ? -1 : sum;
}

// ESTABLISHED IPv4/IPv6 sockets whose remote port is one of `ports`: the
// proxy's connections to its backends (bounded by the size of the tables).
long established_to(const std::set<int>& ports) {
  long n = 0;
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);  // header
    for (int lines = 0; lines < 1000000 && std::getline(f, line); ++lines) {
      // "  sl  local_address rem_address   st ..." ; addresses are HEX:PORT.
      std::istringstream ls(line);
      std::string sl, local, remote, st;
      if (!(ls >> sl >> local >> remote >> st)) continue;
      if (st != "01") continue;
      std::size_t colon = remote.rfind(':');
      if (colon == std::string::npos) continue;
      int port = static_cast<int>(std::strtol(remote.c_str() + colon + 1, nullptr, 16));
      if (ports.count(port)) ++n;
    }
  }
  return n;
}

// True once `in` holds a complete HTTP response (headers + Content-Length body).
bool complete_response(const std::string& in) {
  std::size_t end = in.find("\r\n\r\n");
  if (end == std::string::npos) return false;
  std::size_t body = end + 4;
  std::size_t length = 0;
  std::string headers = in.substr(0, end);
  for (char& c : headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::size_t at = headers.find("\r\ncontent-length:");
  if (at != std::string::npos) length = std::strtoul(headers.c_str() + at + 17, nullptr, 10);
  return in.compare(0, 9, "HTTP/1.1 ") == 0 && in.size() >= body + length;
}

}  // namespace

int main(int argc, char** argv) {
  Target target;
  if (!target_args(argc, argv, 6, "BACKEND_PORTS [WINDOW] [RATE] [DEADLINE_S]", target)) return 2;
  const int count = target.count;
  const std::vector<int> backend_list = parse_list(argv[5]);
  const std::set<int> backend_ports(backend_list.begin(), backend_list.end());
  const int window = int_arg(argc, argv, 6, 64);
  const int rate = int_arg(argc, argv, 7, 4000);
  const int deadline_s = int_arg(argc, argv, 8, 120);
  if (count <= 0 || count > 1000000 || window <= 0 || rate <= 0 || target.port <= 0 || deadline_s <= 0) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }

  const rlim_t nofile = raise_nofile();
  if (!nofile_enough(nofile, count, "heldconn: ")) {
    std::printf("attempted=%d opened=0 error=nofile_%llu\n", count, static_cast<unsigned long long>(nofile));
    return 2;
  }

  sockaddr_in addr;
  if (!ipv4_address(target.host, target.port, addr)) return 2;

  // -1, not 0, without a proxy: "not measured", as for proxy_fds.
  auto rss = [&target] { return target.pids.empty() ? -1L : rss_sum(target.pids); };
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(deadline_s);
  const long rss_idle = rss();

  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Conn> conns(static_cast<size_t>(count));
  std::vector<epoll_event> events(1024);
  char buf[4096];
  int started = 0, in_flight = 0;
  int opened = 0, connect_failed = 0, closed_held = 0, served = 0, serve_failed = 0;
  int held = 0;  // connections currently in State::held

  auto drop = [&](Conn& c) {
    unwatch_close(ep, c.fd);
    c.state = State::closed;
  };
  auto rewatch = [&](uint32_t slot, uint32_t what) { watch(ep, EPOLL_CTL_MOD, conns[slot].fd, slot, what); };
  // Handles events for held connections (the far side closed one) and
  // connecting ones; returns after one epoll_wait.
  auto poll_open_phase = [&](int timeout_ms) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), timeout_ms);
    for (int i = 0; i < n; ++i) {
      const uint32_t slot = events[i].data.u32;
      Conn& c = conns[slot];
      if (c.state == State::connecting) {
        --in_flight;
        if (!connected(c.fd, events[i].events)) {
          drop(c);
          ++connect_failed;
          continue;
        }
        c.state = State::held;
        ++opened;
        ++held;
        rewatch(slot, EPOLLRDHUP);  // only a close by the far side wakes us
      } else if (c.state == State::held) {
        drop(c);
        --held;
        ++closed_held;
      }
    }
  };

  // ---- 2. open, paced by a window and a token bucket.
  Pacer pacer(window, rate);
  while (opened + connect_failed < count && Clock::now() < deadline) {
    pacer.start_connects(ep, addr, started, count, in_flight, [&](int slot, int fd) {
      Conn& c = conns[static_cast<size_t>(slot)];
      c.fd = fd;
      if (fd < 0) {
        c.state = State::closed;
        ++connect_failed;
        return;
      }
      c.state = State::connecting;
      ++in_flight;
    });
    poll_open_phase(1);
  }
  for (auto& c : conns)
    if (c.state == State::connecting || c.state == State::unstarted) {
      if (c.state == State::connecting) ++connect_failed;
      drop(c);
    }
  const double open_seconds = seconds_since(start);

  // ---- 3. hold: wait for the proxy's backend connections (15 s at most).
  long backend_conns = -1;
  const auto hold_end = std::min(deadline, Clock::now() + std::chrono::seconds(15));
  if (!backend_ports.empty()) {
    for (;;) {
      backend_conns = established_to(backend_ports);
      if (backend_conns >= held || Clock::now() >= hold_end) break;
      for (int i = 0; i < 4; ++i) poll_open_phase(50);
    }
  }
  // A short settle in any case, watching for closes.
  for (int i = 0; i < 10; ++i) poll_open_phase(50);
  const int held_before_requests = held;
  const long rss_held = rss();
  const long proxy_fds = fd_count(target.pids);

  // ---- 4. serve: one request on every held connection, read every response.
  const auto serve_start = Clock::now();
  for (size_t i = 0; i < conns.size(); ++i) {
    Conn& c = conns[i];
    if (c.state != State::held) continue;
    if (!send_request(c.fd)) {
      drop(c);
      ++serve_failed;
      continue;
    }
    c.state = State::awaiting;
    rewatch(static_cast<uint32_t>(i), EPOLLIN | EPOLLRDHUP);
  }
  int awaiting = 0;
  for (auto& c : conns) awaiting += c.state == State::awaiting;
  while (awaiting > 0 && Clock::now() < deadline) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
    for (int i = 0; i < n; ++i) {
      const uint32_t slot = events[i].data.u32;
      Conn& c = conns[slot];
      if (c.state == State::awaiting) {
        ssize_t r = recv(c.fd, buf, sizeof buf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r > 0) c.in.append(buf, static_cast<size_t>(r));
        if (r > 0 && complete_response(c.in)) {
          c.state = State::served;
          ++served;
          --awaiting;
          c.in.clear();
          c.in.shrink_to_fit();
          rewatch(slot, EPOLLRDHUP);
        } else if (r <= 0 || c.in.size() > 64 * 1024) {
          drop(c);
          ++serve_failed;
          --awaiting;
        }
      } else if (c.state == State::served) {
        drop(c);  // closed by the far side after its response
      }
    }
  }
  const double serve_seconds = seconds_since(serve_start);
  for (auto& c : conns)
    if (c.state == State::awaiting) {
      drop(c);
      ++serve_failed;
    }

  // ---- 5. settle, count the survivors, RSS after serving.
  poll_for(ep, events, 500, [&](uint32_t slot) {
    if (conns[slot].state == State::served) drop(conns[slot]);
  });
  int open_after = 0;
  for (auto& c : conns) open_after += c.state == State::served;
  const long rss_served = rss();

  std::printf(
      "attempted=%d opened=%d connect_failed=%d closed_while_held=%d held=%d backend_conns=%ld served=%d "
      "serve_failed=%d open_after=%d rss_idle_kb=%ld rss_held_kb=%ld rss_served_kb=%ld proxy_fds=%ld "
      "open_seconds=%.2f serve_seconds=%.2f nofile=%llu\n",
      count, opened, connect_failed, closed_held, held_before_requests, backend_conns, served, serve_failed,
      open_after, rss_idle, rss_held, rss_served, proxy_fds, open_seconds, serve_seconds,
      static_cast<unsigned long long>(nofile));
  std::fflush(stdout);

  for (auto& c : conns)
    if (c.fd >= 0) close(c.fd);
  close(ep);
  return (served == count && open_after == count) ? 0 : 1;
}
