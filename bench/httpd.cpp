// bench/httpd.cpp - tiny HTTP/1.1 backend for the Harmony benchmark suite.
//
// One thread, one epoll loop, non-blocking sockets. Every request gets the
// same fixed response ("hello"). Keep-alive is the default for HTTP/1.1;
// "Connection: close" (or HTTP/1.0 without keep-alive) closes after the
// response. Idle connections are held open forever, which the idle-connection
// test relies on. Pipelined requests are answered in order.
//
//   httpd PORT [HOST]        (HOST defaults to 127.0.0.1)
//
// SIGUSR1 prints "requests=N accepted=M open=K" on stderr; SIGTERM/SIGINT
// stop the server (the same line is printed on exit).
//
// Build: g++ -O2 -std=c++17 -o httpd httpd.cpp

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "loadgen.hpp"

namespace {

volatile sig_atomic_t g_stop = 0;
volatile sig_atomic_t g_report = 0;

void on_stop(int) { g_stop = 1; }
void on_report(int) { g_report = 1; }

const char kKeepAlive[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 5\r\n"
    "\r\n"
    "hello";
const char kClose[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 5\r\n"
    "Connection: close\r\n"
    "\r\n"
    "hello";

constexpr size_t kMaxRequest = 16 * 1024;  // a header block larger than this is refused

struct Conn {
  bool open = false;
  bool close_after = false;  // close once `out` is flushed
  bool want_out = false;     // EPOLLOUT registered
  std::string in;
  std::string out;
};

std::vector<Conn> g_conns;
unsigned long long g_requests = 0, g_accepted = 0, g_open = 0;

// Case-insensitive search for `needle` (lower case) inside [begin, end).
bool contains_ci(const char* begin, const char* end, const char* needle) {
  const size_t n = std::strlen(needle);
  for (const char* p = begin; p + n <= end; ++p) {
    size_t i = 0;
    while (i < n) {
      char c = p[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != needle[i]) break;
      ++i;
    }
    if (i == n) return true;
  }
  return false;
}


void close_conn(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  Conn& c = g_conns[fd];
  c.open = false;
  c.close_after = false;
  c.want_out = false;
  std::string().swap(c.in);
  std::string().swap(c.out);
  --g_open;
}

// Writes as much of c.out as the socket takes. Returns false when the
// connection was closed (error, or finished with close_after).
bool flush(int ep, int fd) {
  Conn& c = g_conns[fd];
  while (!c.out.empty()) {
    ssize_t n = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c.want_out) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.fd = fd;
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        c.want_out = true;
      }
      return true;
    }
    close_conn(ep, fd);
    return false;
  }
  if (c.close_after) {
    close_conn(ep, fd);
    return false;
  }
  if (c.want_out) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    c.want_out = false;
  }
  return true;
}

// Answers every complete request in c.in. Returns false when the connection
// must be closed (bad request).
bool serve(int fd) {
  Conn& c = g_conns[fd];
  size_t pos = 0;
  while (!c.close_after) {
    size_t end = c.in.find("\r\n\r\n", pos);
    if (end == std::string::npos) break;
    const char* b = c.in.data() + pos;
    const char* e = c.in.data() + end + 2;
    const char* line_end = static_cast<const char*>(std::memchr(b, '\n', static_cast<size_t>(e - b)));
    bool http10 = line_end && contains_ci(b, line_end, "http/1.0");
    bool close = contains_ci(b, e, "\nconnection: close");
    if (http10 && !contains_ci(b, e, "\nconnection: keep-alive")) close = true;
    // Requests with a body are not expected (wrk sends GET); a body would be
    // read as the next request and refused below.
    if (close) {
      c.out.append(kClose, sizeof kClose - 1);
      c.close_after = true;
    } else {
      c.out.append(kKeepAlive, sizeof kKeepAlive - 1);
    }
    ++g_requests;
    pos = end + 4;
  }
  c.in.erase(0, pos);
  return c.in.size() <= kMaxRequest;
}

void report() {
  std::fprintf(stderr, "requests=%llu accepted=%llu open=%llu\n", g_requests, g_accepted, g_open);
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PORT [HOST]\n", argv[0]);
    return 2;
  }
  const int port = std::atoi(argv[1]);
  const char* host = argc > 2 ? argv[2] : "127.0.0.1";

  const rlim_t nofile = loadgen::raise_nofile();
  g_conns.resize(nofile > 1000000 ? 1000000 : nofile);

  struct sigaction sa{};
  sa.sa_handler = on_stop;  // no SA_RESTART: epoll_wait returns EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sa.sa_handler = on_report;
  sigaction(SIGUSR1, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) { std::perror("socket"); return 1; }
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr;
  if (!loadgen::ipv4_address(host, port, addr)) return 2;
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) { std::perror("bind"); return 1; }
  if (listen(lfd, 4096) < 0) { std::perror("listen"); return 1; }

  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

  std::vector<epoll_event> events(512);
  char buf[16384];
  while (!g_stop) {
    if (g_report) {
      g_report = 0;
      report();
    }
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 1000);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == lfd) {
        for (int k = 0; k < 256; ++k) {  // bounded accept burst per wakeup
          int cfd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          if (static_cast<size_t>(cfd) >= g_conns.size()) { close(cfd); continue; }
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = cfd;
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
          g_conns[cfd].open = true;
          ++g_accepted;
          ++g_open;
        }
        continue;
      }
      Conn& c = g_conns[fd];
      if (!c.open) continue;
      if (events[i].events & EPOLLOUT) {
        if (!flush(ep, fd)) continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        bool closed = false;
        for (int k = 0; k < 16; ++k) {  // bounded reads per wakeup (level-triggered)
          ssize_t r = recv(fd, buf, sizeof buf, 0);
          if (r > 0) {
            c.in.append(buf, static_cast<size_t>(r));
            if (static_cast<size_t>(r) < sizeof buf) break;
            continue;
          }
          if (r < 0 && errno == EINTR) continue;
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          close_conn(ep, fd);  // EOF or error
          closed = true;
          break;
        }
        if (closed) continue;
        if (!serve(fd)) {
          close_conn(ep, fd);
          continue;
        }
        if (!c.out.empty() || c.close_after) flush(ep, fd);
      }
    }
  }
  report();
  return 0;
}
