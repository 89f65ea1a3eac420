// bench/loadgen.hpp - what the bench's load generators (idleconn, heldconn)
// and its backend (httpd) share.
//
// Header-only, so that each tool still builds from its one .cpp with the
// command in bench/run.

#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace loadgen {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Comma-separated PIDs or ports. bench/run passes "0" for "none", so
// anything not positive is skipped rather than refused.
inline std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    int v = std::atoi(tok.c_str());
    if (v > 0) out.push_back(v);
  }
  return out;
}

// The arguments idleconn and heldconn both start with: HOST PORT COUNT PIDS
// (the proxy's processes, whose memory is measured).
struct Target {
  const char* host = nullptr;
  int port = 0;
  int count = 0;
  std::vector<int> pids;
};

// False, with the usage line on stderr (`more` names the arguments after
// PIDS), when fewer than `needed` arguments are given. Values are checked
// by the caller.
inline bool target_args(int argc, char** argv, int needed, const char* more, Target& t) {
  if (argc < needed) {
    std::fprintf(stderr, "usage: %s HOST PORT COUNT PIDS %s\n", argv[0], more);
    return false;
  }
  t.host = argv[1];
  t.port = std::atoi(argv[2]);
  t.count = std::atoi(argv[3]);
  t.pids = parse_list(argv[4]);
  return true;
}

inline int int_arg(int argc, char** argv, int i, int fallback) {
  return argc > i ? std::atoi(argv[i]) : fallback;
}

// Every connection held costs a descriptor, and the default soft limit (1024)
// is far below the thousands the bench holds. Returns the soft limit now in
// force.
inline rlim_t raise_nofile() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

// Refusing up front beats a run that fails with EMFILE halfway and reports
// the proxy's figures for fewer connections than asked. The 16 spare cover
// the standard streams, epoll and the like. `who` prefixes the complaint.
inline bool nofile_enough(rlim_t limit, int conns, const char* who) {
  if (limit >= static_cast<rlim_t>(conns) + 16) return true;
  std::fprintf(stderr, "%sdescriptor limit %llu too low for %d connections\n", who,
               static_cast<unsigned long long>(limit), conns);
  return false;
}

// Numeric IPv4 only: the bench runs on loopback and must not depend on a
// resolver.
inline bool ipv4_address(const char* host, int port, sockaddr_in& addr) {
  addr = sockaddr_in{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host, &addr.sin_addr) == 1) return true;
  std::fprintf(stderr, "bad host %s\n", host);
  return false;
}

inline long rss_kb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.compare(0, 6, "VmRSS:") == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

// A proxy may run as several processes (nginx), so its memory is the sum.
// -1 when one of them is gone: a partial sum would pass for a real figure.
inline long rss_sum(const std::vector<int>& pids) {
  long sum = 0;
  for (int pid : pids) {
    long r = rss_kb(pid);
    if (r < 0) return -1;
    sum += r;
  }
  return sum;
}

// Keep-alive, so that the connection stays open after the answer.
inline constexpr char kRequest[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

inline bool send_request(int fd) {
  constexpr auto size = sizeof kRequest - 1;
  return send(fd, kRequest, size, MSG_NOSIGNAL) == static_cast<ssize_t>(size);
}

// The tools keep their connections in a table; data.u32 carries the slot, so
// that an event leads straight to its connection.
inline void watch(int ep, int op, int fd, uint32_t slot, uint32_t what) {
  epoll_event ev{};
  ev.events = what;
  ev.data.u32 = slot;
  epoll_ctl(ep, op, fd, &ev);
}

inline void unwatch_close(int ep, int& fd) {
  if (fd < 0) return;
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  fd = -1;
}

// Non-blocking, so that one thread keeps a whole window of connects pending.
// Returns -1, with nothing left open, when the connect fails at once;
// otherwise the socket is watched for EPOLLOUT, which comes when the connect
// completes or fails (see connected()).
inline int start_connect(int ep, const sockaddr_in& addr, uint32_t slot) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  watch(ep, EPOLL_CTL_ADD, fd, slot, EPOLLOUT);
  return fd;
}

inline bool connected(int fd, uint32_t events) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  return err == 0 && !(events & (EPOLLERR | EPOLLHUP));
}

// An unpaced opener overflows the listen backlogs of the proxy and of the
// backends, and every dropped SYN costs a 1 s retry that would swamp what is
// measured. So at most `window` connects in flight and, if rate > 0, at most
// `rate` new ones a second (a token bucket `window` deep, so that a pause
// does not turn into a burst).
class Pacer {
 public:
  Pacer(int window, double rate) : window_(window), rate_(rate), tokens_(window), refilled_(Clock::now()) {}

  // Starts connects for slots next, next + 1, ... below `count` while the
  // pace allows. `on_started(slot, fd)` hears of each (fd -1: failed at
  // once) and keeps `in_flight`: what counts as in flight differs per tool.
  template <class OnStarted>
  void start_connects(int ep, const sockaddr_in& addr, int& next, int count, const int& in_flight,
                      OnStarted on_started) {
    refill();
    while (next < count && admit(in_flight)) {
      const int slot = next++;
      on_started(slot, start_connect(ep, addr, static_cast<uint32_t>(slot)));
    }
  }

 private:
  void refill() {
    if (rate_ <= 0) return;
    const auto now = Clock::now();
    tokens_ = std::min<double>(window_, tokens_ + std::chrono::duration<double>(now - refilled_).count() * rate_);
    refilled_ = now;
  }
  bool admit(int in_flight) {
    if (in_flight >= window_ || (rate_ > 0 && tokens_ < 1)) return false;
    tokens_ -= 1;
    return true;
  }

  int window_;
  double rate_;
  double tokens_;
  Clock::time_point refilled_;
};

// Waits `ms` milliseconds in short slices, so that a close by the far side
// is seen while waiting; hands each event's slot to `on_event`.
template <class OnEvent>
void poll_for(int ep, std::vector<epoll_event>& events, int ms, OnEvent on_event) {
  const auto end = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < end) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) on_event(events[i].data.u32);
  }
}

}  // namespace loadgen
