// Test support: blocking sockets with timeouts and small backends that run on
// threads of their own, independent of the balancer's event loop.
#pragma once
#include "../harmony.hpp"

#include <ostream>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace test {

using namespace std::chrono_literals;

// A socket that closes itself.
class sock {
 public:
  sock() = default;
  explicit sock(int fd) : fd_(fd) {}
  sock(sock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  sock& operator=(sock&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~sock() { reset(); }
  int fd() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void set_timeout(std::chrono::milliseconds t) const {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  bool send_all(const void* data, std::size_t n) const {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t k = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (k <= 0) {
        if (k < 0 && errno == EINTR) continue;
        return false;
      }
      p += k;
      n -= static_cast<std::size_t>(k);
    }
    return true;
  }
  bool send_all(const std::string& s) const { return send_all(s.data(), s.size()); }
  void shutdown_send() const { ::shutdown(fd_, SHUT_WR); }
  // Reads until EOF (true), or an error or timeout (false).
  bool read_to_eof(std::string& out) const {
    char buf[65536];
    for (;;) {
      ssize_t k = ::recv(fd_, buf, sizeof buf, 0);
      if (k == 0) return true;
      if (k < 0) {
        if (errno == EINTR) continue;
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
      ssize_t k = ::recv(fd_, buf, std::min(sizeof buf, n - s.size()), 0);
      if (k <= 0) {
        if (k < 0 && errno == EINTR) continue;
        break;
      }
      s.append(buf, static_cast<std::size_t>(k));
    }
    return s;
  }

 private:
  int fd_ = -1;
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

// Connects with a timeout, optionally from a chosen source address (127.0.0.x).
inline sock connect_to(const harmony::endpoint& ep, const char* source = nullptr,
                       std::chrono::milliseconds timeout = 5000ms) {
  socklen_t len = 0;
  sockaddr_storage ss = make_address(ep, len);
  sock s(::socket(ss.ss_family, SOCK_STREAM, 0));
  if (!s) return s;
  if (source) {
    socklen_t slen = 0;
    sockaddr_storage src = make_address(harmony::endpoint{source, 0}, slen);
    if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&src), slen) != 0) return sock{};
  }
  s.set_timeout(timeout);
  if (::connect(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return sock{};
  return s;
}

inline sock connect_to(const std::string& address, const char* source = nullptr) {
  harmony::endpoint ep;
  REQUIRE_FALSE(harmony::parse_endpoint(address, ep));
  return connect_to(ep, source);
}

inline sock listen_on(const char* host, harmony::endpoint& bound, int backlog = 128) {
  socklen_t len = 0;
  sockaddr_storage ss = make_address(harmony::endpoint{host, 0}, len);
  sock s(::socket(ss.ss_family, SOCK_STREAM, 0));
  int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
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
  explicit backend(handler h, const char* host = "127.0.0.1") : handler_(std::move(h)) {
    listener_ = listen_on(host, at_);
    REQUIRE(listener_);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~backend() { stop(); }
  void stop() {
    if (stopped_.exchange(true)) return;
    ::shutdown(listener_.fd(), SHUT_RDWR);
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
  int accepted() const { return accepted_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      int fd = ::accept(listener_.fd(), nullptr, nullptr);
      if (fd < 0) {
        if (stopped_) return;
        if (errno == EINTR || errno == ECONNABORTED) continue;
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
    ssize_t k = ::recv(s.fd(), buf, sizeof buf, 0);
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
inline std::string exchange(const std::string& address, const std::string& request, const char* source = nullptr) {
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
  for (int i = 0; i < n; ++i) ++count[name_of(exchange(address, "x"))];
  return count;
}

// Polls `condition` until it holds or `limit` passes.
template <class F>
bool eventually(F condition, std::chrono::milliseconds limit = 5000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
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
  int one = 1;
  ::setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
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
        ssize_t k = ::recv(s_.fd(), b, sizeof b, 0);
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

// A backend that writes its name at once and holds the connection until released.
class holding_backend {
 public:
  explicit holding_backend(std::string name)
      : b_([this, name](const sock& c) {
          ++open_;
          c.send_all(name);
          for (int i = 0; i < 2000 && !released_; ++i) {
            pollfd p{c.fd(), POLLIN, 0};
            if (::poll(&p, 1, 5) > 0) {
              char x[256];
              if (::recv(c.fd(), x, sizeof x, 0) <= 0) break;
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

}  // namespace test
