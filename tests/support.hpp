// Test support: blocking sockets with timeouts and small backends that run on
// threads of their own, independent of the balancer's event loop.
#pragma once
#include "../harmony.hpp"

#include <ostream>
#include <doctest/doctest.h>

#include "dns.hpp"

#if defined(_WIN32)
// The same tests on Windows: a thin shim below gives the few calls that differ
// (closesocket, ioctlsocket, timeouts in milliseconds, WSA error codes) one name.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#else
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#endif
#if defined(__linux__)
#include <dirent.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

// Ends a case that cannot make its check on this system, saying why. tests/run
// counts it as skipped, never as passed. Where every prerequisite is meant to be
// present (HARMONY_NO_SKIP=1: CI), a skip fails the case instead. A case that no
// configuration of some platform can run is marked with doctest::skip() where it
// is declared, and doctest counts it as skipped.
#define SKIP_CASE(why)                                                                  \
  do {                                                                                 \
    if (std::getenv("HARMONY_NO_SKIP")) FAIL("skipped where nothing may be: " << why); \
    MESSAGE("skipped: " << why);                                                       \
    return;                                                                            \
  } while (0)

namespace test {

using namespace std::chrono_literals;

#if defined(_WIN32)
using socket_t = SOCKET;
constexpr socket_t no_socket = INVALID_SOCKET;
constexpr int shut_send = SD_SEND;
using io_result = int;
inline const bool winsock_started = [] {
  WSADATA data;
  return ::WSAStartup(MAKEWORD(2, 2), &data) == 0;
}();
inline bool interrupted() { return ::WSAGetLastError() == WSAEINTR; }
inline void close_native(socket_t s) { ::closesocket(s); }
// The last socket error as the portable condition it stands for.
inline std::error_code last_error() {
  switch (::WSAGetLastError()) {
    case WSAECONNRESET: return std::make_error_code(std::errc::connection_reset);
    case WSAECONNREFUSED: return std::make_error_code(std::errc::connection_refused);
    case WSAECONNABORTED: return std::make_error_code(std::errc::connection_aborted);
    case WSAEWOULDBLOCK: return std::make_error_code(std::errc::operation_would_block);
    case WSAETIMEDOUT: return std::make_error_code(std::errc::timed_out);
    default: return {::WSAGetLastError(), std::system_category()};
  }
}
#else
using socket_t = int;
constexpr socket_t no_socket = -1;
constexpr int shut_send = SHUT_WR;
using io_result = ssize_t;
inline bool interrupted() { return errno == EINTR; }
inline void close_native(socket_t s) { ::close(s); }
inline std::error_code last_error() { return {errno, std::generic_category()}; }
#endif

// Plain send and recv; a send to a closed peer is an error, never a signal.
inline io_result send_some(socket_t s, const char* data, std::size_t n) {
#if defined(_WIN32)
  return ::send(s, data, static_cast<int>(n), 0);
#else
  return ::send(s, data, n, MSG_NOSIGNAL);
#endif
}
inline io_result recv_some(socket_t s, char* data, std::size_t n) {
#if defined(_WIN32)
  return ::recv(s, data, static_cast<int>(n), 0);
#else
  return ::recv(s, data, n, 0);
#endif
}
inline void set_nonblocking(socket_t s, bool on) {
#if defined(_WIN32)
  u_long mode = on ? 1 : 0;
  ::ioctlsocket(s, FIONBIO, &mode);
#else
  int flags = ::fcntl(s, F_GETFL, 0);
  ::fcntl(s, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
#endif
}
// Waits up to `ms` for the socket to be readable (data, EOF or an error).
inline bool wait_readable(socket_t s, int ms) {
#if defined(_WIN32)
  WSAPOLLFD p{};
  p.fd = s;
  p.events = POLLRDNORM;
  return ::WSAPoll(&p, 1, ms) > 0;
#else
  pollfd p{s, POLLIN, 0};
  return ::poll(&p, 1, ms) > 0;
#endif
}
// A non-blocking connect() that failed only because it has not finished yet.
inline bool connect_in_progress() {
#if defined(_WIN32)
  return ::WSAGetLastError() == WSAEWOULDBLOCK;
#else
  return errno == EINPROGRESS || errno == EINTR;
#endif
}
// Waits up to `ms` for the socket to take more bytes (or to report an error).
inline bool wait_writable(socket_t s, int ms) {
#if defined(_WIN32)
  WSAPOLLFD p{};
  p.fd = s;
  p.events = POLLWRNORM;
  return ::WSAPoll(&p, 1, ms) > 0;
#else
  pollfd p{s, POLLOUT, 0};
  return ::poll(&p, 1, ms) > 0;
#endif
}
inline void set_nodelay(socket_t s) {
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), sizeof one);
}
// Makes the next close send a reset instead of a FIN.
inline void set_linger_zero(socket_t s) {
  ::linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  ::setsockopt(s, SOL_SOCKET, SO_LINGER, reinterpret_cast<const char*>(&l), sizeof l);
}

// A socket that closes itself.
class sock {
 public:
  sock() = default;
  explicit sock(socket_t fd) : fd_(fd) {}
  sock(sock&& o) noexcept : fd_(o.fd_) { o.fd_ = no_socket; }
  sock& operator=(sock&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = no_socket;
    }
    return *this;
  }
  ~sock() { reset(); }
  socket_t fd() const { return fd_; }
  explicit operator bool() const { return fd_ != no_socket; }
  void reset() {
    if (fd_ != no_socket) close_native(fd_);
    fd_ = no_socket;
  }
  void set_timeout(std::chrono::milliseconds t) const {
#if defined(_WIN32)
    DWORD ms = static_cast<DWORD>(t.count());
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<const char*>(&ms), sizeof ms);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, reinterpret_cast<const char*>(&ms), sizeof ms);
#else
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
#endif
  }
  bool send_all(const void* data, std::size_t n) const {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
      io_result k = send_some(fd_, p, n);
      if (k <= 0) {
        if (k < 0 && interrupted()) continue;
        return false;
      }
      p += k;
      n -= static_cast<std::size_t>(k);
    }
    return true;
  }
  bool send_all(const std::string& s) const { return send_all(s.data(), s.size()); }
  void shutdown_send() const { ::shutdown(fd_, shut_send); }
  // Reads until EOF (true), or an error or timeout (false).
  bool read_to_eof(std::string& out) const {
    char buf[65536];
    for (;;) {
      io_result k = recv_some(fd_, buf, sizeof buf);
      if (k == 0) return true;
      if (k < 0) {
        if (interrupted()) continue;
        return false;
      }
      out.append(buf, static_cast<std::size_t>(k));
    }
  }
  std::string read_all() const {
    std::string s;
    read_to_eof(s);
    return s;
  }
  // Reads exactly n bytes unless EOF, error or timeout comes first.
  std::string read_n(std::size_t n) const {
    std::string s;
    char buf[65536];
    while (s.size() < n) {
      io_result k = recv_some(fd_, buf, std::min(sizeof buf, n - s.size()));
      if (k <= 0) {
        if (k < 0 && interrupted()) continue;
        break;
      }
      s.append(buf, static_cast<std::size_t>(k));
    }
    return s;
  }

 private:
  socket_t fd_ = no_socket;
};

inline sockaddr_storage make_address(const harmony::endpoint& ep, socklen_t& len) {
  sockaddr_storage ss{};
  if (ep.host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(ep.port);
    ::inet_pton(AF_INET6, ep.host.c_str(), &a->sin6_addr);
    len = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(ep.port);
    ::inet_pton(AF_INET, ep.host == "localhost" ? "127.0.0.1" : ep.host.c_str(), &a->sin_addr);
    len = sizeof(sockaddr_in);
  }
  return ss;
}

// Fixes a socket's kernel buffers at `bytes` each way (which also stops the
// kernel growing them); before connect() for the receive window to match.
inline void set_kernel_buffers(socket_t s, int bytes) {
  ::setsockopt(s, SOL_SOCKET, SO_SNDBUF, reinterpret_cast<const char*>(&bytes), sizeof bytes);
  ::setsockopt(s, SOL_SOCKET, SO_RCVBUF, reinterpret_cast<const char*>(&bytes), sizeof bytes);
}

// Asks the peer to send segments of at most `bytes` (before connect, or on a
// listener before the connection arrives). Over loopback segments are 64 KiB,
// and the kernel sizes a sender's buffer by segments: small ones keep it small.
// Linux only: elsewhere a no-op.
inline void set_segment_size(socket_t s, int bytes) {
#if defined(__linux__)
  ::setsockopt(s, IPPROTO_TCP, TCP_MAXSEG, &bytes, sizeof bytes);
#else
  (void)s, (void)bytes;
#endif
}

// Connects with a timeout, optionally from a chosen source address (127.0.0.x);
// `prepare` may set socket options before the connect.
inline sock connect_to(const harmony::endpoint& ep, const char* source = nullptr,
                       std::chrono::milliseconds timeout = 5000ms,
                       const std::function<void(socket_t)>& prepare = {}) {
  socklen_t len = 0;
  sockaddr_storage ss = make_address(ep, len);
  sock s(::socket(ss.ss_family, SOCK_STREAM, 0));
  if (!s) return s;
  if (prepare) prepare(s.fd());
  if (source) {
    socklen_t slen = 0;
    sockaddr_storage src = make_address(harmony::endpoint{source, 0}, slen);
    if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&src), slen) != 0) return sock{};
  }
  // Bounded by `timeout` through a non-blocking connect: Windows' SO_SNDTIMEO does
  // not bound connect(), which would wait out the SYN retries (two minutes under
  // Wine) against a backend that never answers.
  set_nonblocking(s.fd(), true);
  if (::connect(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (!connect_in_progress()) return sock{};
    if (!wait_writable(s.fd(), static_cast<int>(timeout.count()))) return sock{};
    int error = 0;
    socklen_t size = sizeof error;
    if (::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&error), &size) != 0 || error != 0)
      return sock{};
  }
  set_nonblocking(s.fd(), false);
  s.set_timeout(timeout);
  return s;
}

inline sock connect_to(const std::string& address, const char* source = nullptr) {
  harmony::endpoint ep;
  REQUIRE_FALSE(harmony::parse_endpoint(address, ep));
  return connect_to(ep, source);
}

inline sock listen_on(const char* host, harmony::endpoint& bound, int backlog = 128, std::uint16_t port = 0) {
  socklen_t len = 0;
  sockaddr_storage ss = make_address(harmony::endpoint{host, port}, len);
  sock s(::socket(ss.ss_family, SOCK_STREAM, 0));
#if !defined(_WIN32)
  // (On Windows this would let a second socket share the port.)
  int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
#endif
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(s.fd(), backlog) != 0) return sock{};
  socklen_t blen = sizeof ss;
  ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&ss), &blen);
  bound.host = host;
  bound.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return s;
}

// A port on which nothing listens: bound, then closed.
inline std::uint16_t dead_port() {
  harmony::endpoint ep;
  sock s = listen_on("127.0.0.1", ep);
  return ep.port;
}

inline std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 gen(seed);
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t v = gen();
    std::memcpy(&s[i], &v, std::min<std::size_t>(8, n - i));
  }
  return s;
}

// A backend on its own threads. The handler gets each accepted connection.
class backend {
 public:
  using handler = std::function<void(const sock&)>;
  // `port` 0: an ephemeral one. A given port that is taken leaves the backend
  // not listening (listening() is false) rather than failing the test.
  explicit backend(handler h, const char* host = "127.0.0.1", std::uint16_t port = 0) : handler_(std::move(h)) {
    listener_ = listen_on(host, at_, 128, port);
    if (port != 0 && !listener_) {
      stopped_ = true;
      return;
    }
    REQUIRE(listener_);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~backend() { stop(); }
  void stop() {
    if (stopped_.exchange(true)) return;
#if defined(_WIN32)
    // shutdown() does not wake a blocked accept() there: a connection does.
    connect_to(at_);
#else
    ::shutdown(listener_.fd(), SHUT_RDWR);
#endif
    if (thread_.joinable()) thread_.join();
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers.swap(workers_);
    }
    for (auto& t : workers) t.join();
    listener_.reset();
  }
  std::string address() const { return at_.to_string(); }
  const harmony::endpoint& at() const { return at_; }
  // For socket options the accepted connections inherit.
  socket_t listening_socket() const { return listener_.fd(); }
  bool listening() const { return static_cast<bool>(listener_); }
  int accepted() const { return accepted_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      socket_t fd = ::accept(listener_.fd(), nullptr, nullptr);
      if (fd == no_socket) {
        if (stopped_) return;
        if (interrupted() || last_error() == std::errc::connection_aborted) continue;
        return;
      }
      if (stopped_) {
        close_native(fd);
        return;
      }
      ++accepted_;
      std::lock_guard<std::mutex> lock(mutex_);
      workers_.emplace_back([this, fd] {
        sock s(fd);
        s.set_timeout(10s);
        handler_(s);
      });
    }
  }
  handler handler_;
  sock listener_;
  harmony::endpoint at_;
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stopped_{false};
  std::atomic<int> accepted_{0};
};

// Echo every byte; pass the client's FIN on after the last one.
inline void echo(const sock& s) {
  char buf[65536];
  for (;;) {
    io_result k = recv_some(s.fd(), buf, sizeof buf);
    if (k <= 0) break;
    if (!s.send_all(buf, static_cast<std::size_t>(k))) return;
  }
  s.shutdown_send();
}

// Reads the request to EOF, answers "<name>:<bytes received>" and closes.
inline backend::handler named(std::string name) {
  return [name](const sock& s) {
    std::string request;
    s.read_to_eof(request);
    s.send_all(name + ":" + std::to_string(request.size()));
  };
}

// Sends a request through the balancer and returns the reply (to EOF).
inline std::string round_trip(const std::string& address, const std::string& request, const char* source = nullptr) {
  sock s = connect_to(address, source);
  if (!s) return "<connect failed>";
  s.send_all(request);
  s.shutdown_send();
  return s.read_all();
}

inline std::string name_of(const std::string& reply) { return reply.substr(0, reply.find(':')); }

// Sends n sequential short requests through `address`: how many each backend answered.
inline std::map<std::string, int> tally(const std::string& address, int n) {
  std::map<std::string, int> count;
  for (int i = 0; i < n; ++i) ++count[name_of(round_trip(address, "x"))];
  return count;
}

// Waits for an event: polls `condition` until it holds or `limit` passes. The
// limit only bounds how long a broken build makes us wait; a passing run goes on
// as soon as the condition holds. (For "X has not happened", check it at a
// moment that provably comes after X would have happened, not after a sleep.)
template <class F>
bool eventually(F condition, std::chrono::milliseconds limit = 5000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

// A one-shot signal between threads: a backend waits on it instead of sleeping
// in a loop until a flag flips.
class gate {
 public:
  void open() {
    std::lock_guard<std::mutex> lock(m_);
    open_ = true;
    cv_.notify_all();
  }
  // True once open; false if `limit` passes first.
  bool wait(std::chrono::milliseconds limit = 10000ms) {
    std::unique_lock<std::mutex> lock(m_);
    return cv_.wait_for(lock, limit, [this] { return open_; });
  }
  bool is_open() {
    std::lock_guard<std::mutex> lock(m_);
    return open_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

// True when nothing (no byte, no EOF, no error) is waiting to be read right now.
inline bool nothing_to_read(const sock& s) { return !wait_readable(s.fd(), 0); }

#if defined(__linux__)
// What a loopback socket's kernel buffers can hold at most, as Linux reports the
// limits (SO_SNDBUF and SO_RCVBUF read back doubled: they include the kernel's
// bookkeeping, so the payload held is below them), plus one 64 KiB segment
// each way that the kernel may admit past a limit. Buffers only grow while a
// connection lives (autotuning), so a value read now bounds every earlier moment.
inline std::size_t kernel_buffer_bound(socket_t s) {
  int snd = 0, rcv = 0;
  socklen_t len = sizeof snd;
  ::getsockopt(s, SOL_SOCKET, SO_SNDBUF, &snd, &len);
  len = sizeof rcv;
  ::getsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, &len);
  return static_cast<std::size_t>(snd) + static_cast<std::size_t>(rcv) + 2 * 65536;
}

inline bool same_address(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    auto& x = reinterpret_cast<const sockaddr_in&>(a);
    auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  auto& x = reinterpret_cast<const sockaddr_in6&>(a);
  auto& y = reinterpret_cast<const sockaddr_in6&>(b);
  return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
}

// The other end of loopback connection `s` when this process owns it (the
// balancer under test runs in the test process): the descriptor whose local
// address is s's peer and whose peer is s. no_socket when there is none.
inline socket_t far_end_in_this_process(socket_t s) {
  sockaddr_storage local{}, peer{};
  socklen_t len = sizeof local;
  if (::getsockname(s, reinterpret_cast<sockaddr*>(&local), &len) != 0) return no_socket;
  len = sizeof peer;
  if (::getpeername(s, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return no_socket;
  socket_t found = no_socket;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return no_socket;
  while (dirent* e = ::readdir(dir)) {
    int fd = std::atoi(e->d_name);
    if (fd <= 2 || fd == s || fd == ::dirfd(dir)) continue;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage l{}, p{};
    socklen_t ll = sizeof l, pl = sizeof p;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&l), &ll) != 0 ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) != 0)
      continue;
    if (same_address(l, peer) && same_address(p, local)) {
      found = fd;
      break;
    }
  }
  ::closedir(dir);
  return found;
}
#endif

// What the stats must say of splicing: used where asked for and available (Linux),
// never otherwise.
inline void check_splice_use(const harmony::server_stats& st, bool asked) {
#if defined(__linux__)
  if (asked) {
    CHECK(st.bytes_spliced > 0);
    CHECK(st.bytes_spliced <= st.bytes_in + st.bytes_out);
    return;
  }
#endif
  (void)asked;
  CHECK(st.bytes_spliced == 0);
}

// A balancer on an ephemeral port, silent unless HARMONY_TEST_LOG is set.
inline harmony::server_options quiet_options() {
  harmony::server_options o;
  o.listen = "127.0.0.1:0";
  o.admin = "127.0.0.1:0";
  if (std::getenv("HARMONY_TEST_LOG")) {
    o.level = harmony::log_level::debug;
    o.log = [](harmony::log_level l, std::string_view m) {
      std::fprintf(stderr, "[%s] %.*s\n", harmony::to_string(l), static_cast<int>(m.size()), m.data());
    };
  }
  return o;
}

// Collects what the server logs, from any of its threads.
struct captured_log {
  std::mutex m;
  std::vector<std::string> lines;

  void attach(harmony::server_options& o) {
    o.level = harmony::log_level::debug;
    o.log = [this](harmony::log_level, std::string_view text) {
      std::lock_guard<std::mutex> lock(m);
      lines.emplace_back(text);
    };
  }
  std::size_t count(const std::string& part) {
    std::lock_guard<std::mutex> lock(m);
    return static_cast<std::size_t>(
        std::count_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(part) != std::string::npos; }));
  }
  bool saw(const std::string& part) {
    return eventually([&] { return count(part) > 0; });
  }
};

struct running_server {
  explicit running_server(harmony::server_options o) : srv(std::move(o)) { REQUIRE_FALSE(srv.start()); }
  std::string address() const { return srv.listen_endpoint().to_string(); }
  std::string add(const backend& b, int weight = 500) {
    std::string id;
    REQUIRE_FALSE(srv.add_backend(b.address(), weight, &id));
    return id;
  }
  harmony::server srv;
};

}  // namespace test

namespace test {

// Opens an admin connection, writes each piece separately, and reads until the
// reply has `expect` bytes, EOF or the timeout.
inline std::string admin_exchange(const std::string& admin, const std::vector<std::string>& pieces,
                                  std::size_t expect, bool* closed = nullptr) {
  sock s = connect_to(admin);
  if (!s) return "<connect failed>";
  set_nodelay(s.fd());
  for (const auto& p : pieces) {
    s.send_all(p);
    if (pieces.size() > 1) std::this_thread::sleep_for(2ms);
  }
  s.set_timeout(2s);
  std::string reply = s.read_n(expect);
  if (closed) {
    s.set_timeout(1s);
    std::string rest;
    *closed = s.read_to_eof(rest);
  }
  return reply;
}

// What a harmony.js agent does to register: NID, BAL, SPORT, then BYE.
// Returns the id the balancer gave.
inline std::string legacy_register(const std::string& admin, int weight, std::uint16_t port) {
  std::string request = "NID::BAL:" + std::to_string(weight) + ":SPORT:" + std::to_string(port) + ":";
  sock s = connect_to(admin);
  if (!s) return {};
  s.send_all(request);
  std::string expect_tail = "BAL:" + std::to_string(weight) + ":SPORT:" + std::to_string(port) + ":";
  std::string reply = s.read_n(4 + 32 + 1 + expect_tail.size());
  s.send_all("BYE:");
  if (reply.compare(0, 4, "NID:") != 0) return {};
  return reply.substr(4, 32);
}

inline void legacy_ack(const std::string& admin, const std::string& id) {
  sock s = connect_to(admin);
  if (!s) return;
  s.send_all("ACK:" + id + ":ID:" + id + ":");
  s.read_n(2 * (id.size() + 5) - 1);
  s.send_all("BYE:");
  s.read_all();
}

// A native admin session: one line out, the reply lines up to a final ok/err line.
class admin_session {
 public:
  explicit admin_session(const std::string& admin) : s_(connect_to(admin)) { s_.set_timeout(3s); }
  explicit operator bool() const { return static_cast<bool>(s_); }
  std::string call(const std::string& line) {
    s_.send_all(line + "\n");
    return read_reply();
  }
  std::string read_reply() {
    std::string out;
    for (;;) {
      std::size_t nl = buffer_.find('\n');
      if (nl == std::string::npos) {
        char b[4096];
        io_result k = recv_some(s_.fd(), b, sizeof b);
        if (k <= 0) return out + buffer_ + "<eof>";
        buffer_.append(b, static_cast<std::size_t>(k));
        continue;
      }
      std::string line = buffer_.substr(0, nl + 1);
      buffer_.erase(0, nl + 1);
      out += line;
      if (line.rfind("ok", 0) == 0 || line.rfind("err", 0) == 0 || line == "pong\n") return out;
    }
  }
  const sock& socket() const { return s_; }

 private:
  sock s_;
  std::string buffer_;
};

// A listener whose accept queue is full: the kernel drops further SYNs, so a
// connect to it hangs (a blackholed backend). Ready once a filler's handshake
// has completed; `at` is where it listens.
struct blackhole {
  harmony::endpoint at;
  sock listener = listen_on("127.0.0.1", at, 0);
  std::vector<sock> fillers;
  bool ready = false;
  blackhole() {
    if (!listener) return;
    for (int i = 0; i < 4; ++i) {
      sock f(::socket(AF_INET, SOCK_STREAM, 0));
      set_nonblocking(f.fd(), true);
      socklen_t len = 0;
      sockaddr_storage ss = make_address(at, len);
      ::connect(f.fd(), reinterpret_cast<sockaddr*>(&ss), len);
      fillers.push_back(std::move(f));
    }
    ready = eventually([&] {
      for (auto& f : fillers)
        if (wait_writable(f.fd(), 0)) return true;
      return false;
    });
    // Checked, not assumed: one more connect must hang on this kernel.
    if (ready) {
      socklen_t len = 0;
      sockaddr_storage ss = make_address(at, len);
      sock probe(::socket(ss.ss_family, SOCK_STREAM, 0));
      set_nonblocking(probe.fd(), true);
      ::connect(probe.fd(), reinterpret_cast<sockaddr*>(&ss), len);
      hangs = !wait_writable(probe.fd(), 300);
      fillers.push_back(std::move(probe));
    }
  }
  std::string address() const { return at.to_string(); }
  bool hangs = false;  // a connect to it does not complete (within 300 ms)
};

// A backend that reads the client's two bytes, sends the first MiB of `data`, waits
// for `go`, then sends the rest and its FIN: its transfers are in flight until then.
inline backend::handler gated_sender(const std::string& data, gate& go) {
  return [&data, &go](const sock& s) {
    s.read_n(2);
    std::size_t first = std::min<std::size_t>(data.size(), 1u << 20);
    if (!s.send_all(data.data(), first)) return;
    go.wait(20000ms);
    s.send_all(data.data() + first, data.size() - first);
    s.shutdown_send();
  };
}

// A client of such a backend on a thread of its own: sends two bytes, reads to EOF.
inline std::future<std::string> fetch(const std::string& address) {
  sock s = connect_to(address);
  REQUIRE(s);
  REQUIRE(s.send_all("go"));
  return std::async(std::launch::async, [s = std::move(s)]() mutable {
    s.set_timeout(20s);
    std::string got;
    s.read_to_eof(got);
    return got;
  });
}

// A backend that writes its name at once and holds the connection until released.
class holding_backend {
 public:
  explicit holding_backend(std::string name)
      : b_([this, name](const sock& c) {
          ++open_;
          c.send_all(name);
          for (int i = 0; i < 2000 && !released_; ++i) {
            if (wait_readable(c.fd(), 5)) {
              char x[256];
              if (recv_some(c.fd(), x, sizeof x) <= 0) break;
            }
          }
          --open_;
        }) {}
  ~holding_backend() { release(); }
  void release() { released_ = true; }
  int open() const { return open_; }
  backend& server() { return b_; }

 private:
  std::atomic<bool> released_{false};
  std::atomic<int> open_{0};
  backend b_;
};

// A UDP socket bound to an ephemeral port of 127.0.0.1; returns the port.
inline std::uint16_t bind_udp(sock& s) {
  s = sock(::socket(AF_INET, SOCK_DGRAM, 0));
  socklen_t len = 0;
  sockaddr_storage ss = make_address(harmony::endpoint{"127.0.0.1", 0}, len);
  REQUIRE(::bind(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) == 0);
  socklen_t blen = sizeof ss;
  ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&ss), &blen);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// A name server on loopback for SRV names: UDP, and TCP on the same port for
// the answers it truncates over UDP. What it answers is set() by the test.
class name_server {
 public:
  name_server() {
    for (int tries = 0; tries < 20 && !tcp_; ++tries) {
      port_ = bind_udp(udp_);
      harmony::endpoint bound;
      tcp_ = listen_on("127.0.0.1", bound, 16, port_);  // the same port number, for TCP
    }
    REQUIRE(tcp_);
    udp_thread_ = std::thread([this] { serve_udp(); });
    tcp_thread_ = std::thread([this] { serve_tcp(); });
  }
  ~name_server() {
    stop_ = true;
    udp_thread_.join();
    tcp_thread_.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void set(std::vector<test_dns::srv> records, std::vector<test_dns::host> hosts = {}) {
    std::lock_guard<std::mutex> lock(m_);
    records_ = std::move(records);
    hosts_ = std::move(hosts);
  }
  void fail(int rcode) { rcode_ = rcode; }
  void truncate_udp(bool on) { truncate_ = on; }
  int udp_queries() const { return udp_count_; }
  int tcp_queries() const { return tcp_count_; }

 private:
  std::string reply(const std::string& query, bool over_tcp) {
    std::uint16_t id = 0, type = 0;
    std::string name;
    if (!test_dns::read_query(query, id, name, type)) return {};
    std::lock_guard<std::mutex> lock(m_);
    if (rcode_ != 0) return test_dns::answer(id, name, {}, {}, true, rcode_);
    if (truncate_ && !over_tcp) return test_dns::answer(id, name, {}, {}, true, 0, true);
    return test_dns::answer(id, name, records_, hosts_);
  }
  void serve_udp() {
    while (!stop_) {
      if (!wait_readable(udp_.fd(), 20)) continue;
      char buf[1500];
      sockaddr_storage from{};
      socklen_t flen = sizeof from;
      auto n = ::recvfrom(udp_.fd(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
      if (n <= 0) continue;
      ++udp_count_;
      std::string r = reply(std::string(buf, static_cast<std::size_t>(n)), false);
      ::sendto(udp_.fd(), r.data(), static_cast<int>(r.size()), 0, reinterpret_cast<sockaddr*>(&from), flen);
    }
  }
  void serve_tcp() {
    while (!stop_) {
      if (!wait_readable(tcp_.fd(), 20)) continue;
      sock c(::accept(tcp_.fd(), nullptr, nullptr));
      if (!c) continue;
      c.set_timeout(2000ms);
      std::string got;
      char buf[512];
      auto framed_size = [&] { return 2 + ((std::size_t{static_cast<unsigned char>(got[0])} << 8) | static_cast<unsigned char>(got[1])); };
      while (got.size() < 2 || got.size() < framed_size()) {
        auto n = recv_some(c.fd(), buf, sizeof buf);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
      }
      if (got.size() < 2) continue;
      ++tcp_count_;
      std::string r = reply(got.substr(2), true);
      std::string framed;
      test_dns::put16(framed, static_cast<unsigned>(r.size()));
      framed += r;
      c.send_all(framed);
    }
  }

  sock udp_, tcp_;
  std::uint16_t port_ = 0;
  std::mutex m_;
  std::vector<test_dns::srv> records_;
  std::vector<test_dns::host> hosts_;
  std::atomic<int> rcode_{0};
  std::atomic<bool> truncate_{false};
  std::atomic<int> udp_count_{0}, tcp_count_{0};
  std::atomic<bool> stop_{false};
  std::thread udp_thread_, tcp_thread_;
};

}  // namespace test
