// A deliberately tiny blocking HTTP/1.0 server and client for the examples: just
// enough to show traffic flowing through the balancer. Not part of the library.
#pragma once

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
using socket_t = SOCKET;
inline void close_sock(socket_t s) { closesocket(s); }
inline bool sockets_ready() {
  WSADATA data;
  return WSAStartup(MAKEWORD(2, 2), &data) == 0;
}
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
using socket_t = int;
inline void close_sock(socket_t s) { ::close(s); }
inline bool sockets_ready() { return true; }
#endif

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

// Serves every request with `body` (plus a hook called before answering).
class tiny_http_server {
 public:
  // Port 0 picks a free port; port() is 0 when listening failed.
  tiny_http_server(std::string body, std::function<void()> on_request = {}, std::uint16_t port = 0)
      : body_(std::move(body)), on_request_(std::move(on_request)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;  // a restarted demo must not wait for old connections' TIME_WAIT
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&one), sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 64) != 0) return;
    socklen_t len = sizeof a;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~tiny_http_server() {
    stopping_ = true;
    ::shutdown(listener_, 2);  // SHUT_RDWR / SD_BOTH: wakes the blocked accept on every OS
    close_sock(listener_);
    if (thread_.joinable()) thread_.join();
  }
  std::uint16_t port() const { return port_; }

 private:
  void serve() {
    for (;;) {
      socket_t c = ::accept(listener_, nullptr, nullptr);
      if (stopping_) {
        if (c != static_cast<socket_t>(-1)) close_sock(c);
        return;
      }
      if (c == static_cast<socket_t>(-1)) continue;
      char buf[4096];
      std::string request;
      while (request.find("\r\n\r\n") == std::string::npos) {
        int n = static_cast<int>(::recv(c, buf, sizeof buf, 0));
        if (n <= 0) break;
        request.append(buf, static_cast<std::size_t>(n));
      }
      if (on_request_) on_request_();
      std::string reply = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                          std::to_string(body_.size()) + "\r\nConnection: close\r\n\r\n" + body_;
      ::send(c, reply.data(), static_cast<int>(reply.size()), 0);
      close_sock(c);
    }
  }
  std::string body_;
  std::function<void()> on_request_;
  socket_t listener_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// GET / from 127.0.0.1:port; returns the body, or the whole reply if it has no header.
inline std::string tiny_http_get(std::uint16_t port) {
  socket_t s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close_sock(s);
    return "(connect failed)";
  }
  const char request[] = "GET / HTTP/1.0\r\nHost: example\r\n\r\n";
  ::send(s, request, static_cast<int>(sizeof request - 1), 0);
  std::string reply;
  char buf[4096];
  for (;;) {
    int n = static_cast<int>(::recv(s, buf, sizeof buf, 0));
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  close_sock(s);
  std::size_t body = reply.find("\r\n\r\n");
  return body == std::string::npos ? reply : reply.substr(body + 4);
}
