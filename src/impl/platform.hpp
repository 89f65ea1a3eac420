// >>platform  OS headers, socket helpers, randomness
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#if defined(_WIN32)
// Only the implementation unit (every unit, in header-only mode) sees <windows.h>;
// the macros it needs are set here when absent and undone afterwards.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#define HARMONY_UNDEF_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#define HARMONY_UNDEF_NOMINMAX
#endif
// A program may have included <windows.h>, and with it the old <winsock.h>,
// first. MinGW-w64's headers cope with that order but say so with a #warning
// (which no pragma silences) keyed on the old header's guard, and that would
// break -Werror builds of such programs; <winsock2.h> sets the guard again.
#if defined(__MINGW32__) && defined(_WINSOCKAPI_) && !defined(_WINSOCK2API_)
#undef _WINSOCKAPI_
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <ntsecapi.h>
#ifdef HARMONY_UNDEF_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef HARMONY_UNDEF_LEAN_AND_MEAN
#endif
#ifdef HARMONY_UNDEF_NOMINMAX
#undef NOMINMAX
#undef HARMONY_UNDEF_NOMINMAX
#endif
#if defined(_MSC_VER)
#pragma comment(lib, "ws2_32")
#pragma comment(lib, "mswsock")
#pragma comment(lib, "advapi32")
#endif
#else
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#if defined(__linux__)
#include <dirent.h>
#include <sys/random.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(HARMONY_USE_EPOLL)
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
#endif

namespace harmony {
namespace detail {

using clock = std::chrono::steady_clock;
inline std::int64_t now_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now().time_since_epoch()).count();
}

#if defined(_WIN32)
using socket_handle = SOCKET;
constexpr socket_handle invalid_socket = INVALID_SOCKET;
#if defined(_MSC_VER)
using ssize_t = std::ptrdiff_t;
#endif
// The POSIX name, so that the shared code says shutdown(fd, SHUT_WR) on both systems
// (unless a compatibility header of the program already made it a macro).
#ifndef SHUT_WR
constexpr int SHUT_WR = SD_SEND;
#endif

// Winsock wants WSAStartup once per process before any other call. It is never
// undone: WSACleanup at exit could pull sockets from under objects that other
// static destructors are still closing, and the end of the process frees it all.
inline bool winsock_ready() noexcept {
  static const bool ready = [] {
    WSADATA data;
    return ::WSAStartup(MAKEWORD(2, 2), &data) == 0;
  }();
  return ready;
}

// Winsock and completion codes as the portable conditions they mean, so that a
// caller compares them with std::errc on every system.
inline int portable_errno(int code) noexcept {
  switch (code) {
    case WSAEWOULDBLOCK: return EWOULDBLOCK;
    case WSAEINPROGRESS: return EINPROGRESS;
    case WSAEINTR: return EINTR;
    case WSAEACCES: return EACCES;
    case WSAEINVAL: return EINVAL;
    case WSAEMFILE: return EMFILE;
    case WSAENOBUFS: return ENOBUFS;
    case WSAENOTSOCK: return ENOTSOCK;
    case WSAEAFNOSUPPORT: return EAFNOSUPPORT;
    case WSAEADDRINUSE: return EADDRINUSE;
    case WSAEADDRNOTAVAIL: return EADDRNOTAVAIL;
    case WSAENETDOWN: return ENETDOWN;
    case WSAENETUNREACH: case ERROR_NETWORK_UNREACHABLE: return ENETUNREACH;
    case WSAEHOSTUNREACH: case ERROR_HOST_UNREACHABLE: return EHOSTUNREACH;
    case WSAENETRESET: return ENETRESET;
    case WSAECONNABORTED: case ERROR_CONNECTION_ABORTED: return ECONNABORTED;
    // A reset seen by an overlapped operation may come back as "network name deleted".
    case WSAECONNRESET: case ERROR_NETNAME_DELETED: return ECONNRESET;
    case WSAECONNREFUSED: case ERROR_CONNECTION_REFUSED: case ERROR_PORT_UNREACHABLE: return ECONNREFUSED;
    case WSAETIMEDOUT: case ERROR_SEM_TIMEOUT: return ETIMEDOUT;
    case WSAENOTCONN: return ENOTCONN;
    case WSAESHUTDOWN: return EPIPE;
    case WSAEISCONN: return EISCONN;
    case WSAEMSGSIZE: return EMSGSIZE;
    case WSA_OPERATION_ABORTED: return ECANCELED;
    default: return 0;
  }
}

class winsock_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "winsock"; }
  std::string message(int value) const override {
    std::string text = std::system_category().message(value);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == '.')) text.pop_back();
    return text;
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    int e = portable_errno(value);
    return e ? std::error_condition(e, std::generic_category()) : std::error_condition(value, *this);
  }
};
inline const std::error_category& winsock_category() noexcept {
  static const winsock_category_impl category;
  return category;
}

inline int last_socket_error() noexcept { return ::WSAGetLastError(); }
inline bool would_block(int e) noexcept { return e == WSAEWOULDBLOCK; }
inline std::error_code system_error_code(int e) noexcept { return {e, winsock_category()}; }
inline void close_socket(socket_handle s) noexcept { ::closesocket(s); }
// Closing with a zero linger sends a reset instead of a FIN: how a reset is passed on.
inline void abort_socket(socket_handle s) noexcept {
  ::linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  ::setsockopt(s, SOL_SOCKET, SO_LINGER, reinterpret_cast<const char*>(&l), sizeof l);
  ::closesocket(s);
}
inline void set_nodelay(socket_handle s) noexcept {
  BOOL one = TRUE;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), sizeof one);
}
// Windows does not tell how much of what was sent the peer has yet to acknowledge.
inline std::size_t unsent_bytes(socket_handle) noexcept { return 0; }
// Overlapped operations ignore this mode; it makes the plain send/recv calls
// that the engine also uses return WSAEWOULDBLOCK instead of waiting.
inline bool set_nonblocking(socket_handle s) noexcept {
  u_long one = 1;
  return ::ioctlsocket(s, FIONBIO, &one) == 0;
}
inline int clamp_length(std::size_t n) noexcept { return n > INT_MAX ? INT_MAX : static_cast<int>(n); }
inline ssize_t send_some(socket_handle s, const char* data, std::size_t n) noexcept {
  return ::send(s, data, clamp_length(n), 0);
}
inline ssize_t recv_some(socket_handle s, char* data, std::size_t n) noexcept {
  return ::recv(s, data, clamp_length(n), 0);
}
// Windows has no SIGPIPE: a send to a closed peer fails with an error.
inline void block_sigpipe_on_this_thread() noexcept {}
#else
using socket_handle = int;
constexpr socket_handle invalid_socket = -1;
inline int last_socket_error() noexcept { return errno; }
inline bool would_block(int e) noexcept { return e == EAGAIN || e == EWOULDBLOCK; }
inline std::error_code system_error_code(int e) noexcept { return {e, std::system_category()}; }
inline void close_socket(socket_handle s) noexcept { ::close(s); }
// Closing with a zero linger sends a reset instead of a FIN: how a reset is passed on.
inline void abort_socket(socket_handle s) noexcept {
  ::linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  ::setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(s);
}
inline void set_nodelay(socket_handle s) noexcept {
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
// What the kernel still holds of what was sent on `s`: not yet sent, or not yet
// acknowledged by the peer. Closing with a reset throws that away. 0 where the
// system does not tell.
inline std::size_t unsent_bytes(socket_handle s) noexcept {
  int n = 0;
#if defined(FIONWRITE)
  if (::ioctl(s, FIONWRITE, &n) == 0 && n > 0) return static_cast<std::size_t>(n);
#elif defined(TIOCOUTQ)
  if (::ioctl(s, TIOCOUTQ, &n) == 0 && n > 0) return static_cast<std::size_t>(n);
#else
  (void)s;
#endif
  return 0;
}
inline bool set_nonblocking(socket_handle s) noexcept {
  int flags = ::fcntl(s, F_GETFL, 0);
  return flags >= 0 && ::fcntl(s, F_SETFL, flags | O_NONBLOCK) == 0 && ::fcntl(s, F_SETFD, FD_CLOEXEC) == 0;
}
inline ssize_t send_some(socket_handle s, const char* data, std::size_t n) noexcept {
#if defined(MSG_NOSIGNAL)
  return ::send(s, data, n, MSG_NOSIGNAL);
#else
  return ::send(s, data, n, 0);
#endif
}
inline ssize_t recv_some(socket_handle s, char* data, std::size_t n) noexcept { return ::recv(s, data, n, 0); }

// splice(2) into a socket whose peer has gone raises SIGPIPE (it takes no
// MSG_NOSIGNAL), so the relay splices only on a thread where that signal is
// ignored or blocked. The server's own threads block it: every other call of
// the library says MSG_NOSIGNAL, so the signal has nothing else to tell them.
inline void block_sigpipe_on_this_thread() noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}
inline bool sigpipe_harmless_on_this_thread() noexcept {
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && !(current.sa_flags & SA_SIGINFO) &&
      current.sa_handler == SIG_IGN)
    return true;
  sigset_t mask;
  return ::pthread_sigmask(SIG_BLOCK, nullptr, &mask) == 0 && sigismember(&mask, SIGPIPE) == 1;
}
#endif

struct address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() noexcept { return reinterpret_cast<sockaddr*>(&storage); }
  int family() const noexcept { return storage.ss_family; }
  std::uint16_t port() const noexcept {
    if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    if (family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    return 0;
  }
  void set_port(std::uint16_t p) noexcept {
    if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(p);
    if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(p);
  }
  // The host part only, as bytes: the persistence key of a client.
  std::string host_key() const {
    if (family() == AF_INET) {
      auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
      return std::string(reinterpret_cast<const char*>(&a->sin_addr), 4);
    }
    if (family() == AF_INET6) {
      auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
      return std::string(reinterpret_cast<const char*>(&a->sin6_addr), 16);
    }
    return {};
  }
  std::string host_text() const {
    char text[INET6_ADDRSTRLEN] = {0};
    if (family() == AF_INET)
      ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, text, sizeof text);
    else if (family() == AF_INET6)
      ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, text, sizeof text);
    return text;
  }
  endpoint to_endpoint() const { return endpoint{host_text(), port()}; }
};

// getaddrinfo for TCP, IPv4 and IPv6 (no AI_ADDRCONFIG: with only loopback up both
// families still come back). The list, to free with freeaddrinfo, or nullptr.
inline addrinfo* lookup_stream(const endpoint& ep, bool passive) {
#if defined(_WIN32)
  if (!winsock_ready()) return nullptr;
#endif
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* list = nullptr;
  std::string port = std::to_string(ep.port);
  if (::getaddrinfo(ep.host.empty() ? nullptr : ep.host.c_str(), port.c_str(), &hints, &list) != 0) return nullptr;
  return list;
}

// Whether `host` is an IPv4 or IPv6 address, not a name to look up.
inline bool is_numeric_host(const std::string& host) {
#if defined(_WIN32)
  if (!winsock_ready()) return false;
#endif
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* list = nullptr;
  if (host.empty() || ::getaddrinfo(host.c_str(), nullptr, &hints, &list) != 0) return false;
  ::freeaddrinfo(list);
  return true;
}

inline std::error_code resolve(const endpoint& ep, address& out, bool passive) {
  addrinfo* list = lookup_stream(ep, passive);
  if (!list) return make_error_code(errc::resolve_failed);
  std::memcpy(&out.storage, list->ai_addr, list->ai_addrlen);
  out.length = static_cast<socklen_t>(list->ai_addrlen);
  ::freeaddrinfo(list);
  return {};
}

// The last step of opening a listener on every platform; closes `s` on failure.
inline std::error_code bind_and_listen(socket_handle s, const address& at, socket_handle& out) {
  if (::bind(s, at.get(), at.length) != 0 || ::listen(s, SOMAXCONN) != 0) {
    int e = last_socket_error();
    close_socket(s);
    return system_error_code(e);
  }
  out = s;
  return {};
}

// Whether each event loop can have a listener of its own on one port
// (SO_REUSEPORT, the kernel spreading connections); where not (Windows), the
// first loop accepts for all and deals the connections out.
#if defined(SO_REUSEPORT) && !defined(_WIN32)
inline constexpr bool listeners_share_port = true;
#else
inline constexpr bool listeners_share_port = false;
#endif

#if defined(_WIN32)
inline socket_handle open_stream_socket(int family) noexcept {
  if (!winsock_ready()) return invalid_socket;
  socket_handle s =
      ::WSASocketW(family, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  if (s != invalid_socket && !set_nonblocking(s)) {
    close_socket(s);
    return invalid_socket;
  }
  return s;
}

// Windows has no SO_REUSEPORT, so the workers of a server share one listener
// (see worker). Neither SO_REUSEADDR (there it lets another socket take a bound
// port over) nor SO_EXCLUSIVEADDRUSE (which can refuse a restarted daemon its
// port while old connections linger) is set: the default already protects a
// bound port and allows a quick restart.
inline std::error_code open_listener(const address& at, bool, socket_handle& out) {
  socket_handle s = open_stream_socket(at.family());
  if (s == invalid_socket) return system_error_code(last_socket_error());
  BOOL one = TRUE;
  if (at.family() == AF_INET6)
    ::setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, reinterpret_cast<const char*>(&one), sizeof one);
  return bind_and_listen(s, at, out);
}
#else
inline socket_handle open_stream_socket(int family) noexcept {
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC)
  return ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
#else
  socket_handle s = ::socket(family, SOCK_STREAM, 0);
  if (s != invalid_socket && !set_nonblocking(s)) {
    close_socket(s);
    return invalid_socket;
  }
  return s;
#endif
}

// A listening socket for a successor process to inherit: a duplicate, which dup()
// makes without close-on-exec.
inline std::error_code duplicate_for_successor(socket_handle s, socket_handle& out) noexcept {
  out = ::dup(s);
  return out < 0 ? system_error_code(errno) : std::error_code{};
}

// Takes over a listening socket the process before handed out (server_options::inherited).
inline std::error_code adopt_listener(socket_handle s) noexcept {
  int listening = 0;
  socklen_t length = sizeof listening;
  if (::getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0) return system_error_code(errno);
  if (!listening) return std::make_error_code(std::errc::invalid_argument);
  if (!set_nonblocking(s)) return system_error_code(errno);  // and close-on-exec again
  return {};
}

inline std::error_code open_listener(const address& at, bool reuse_port, socket_handle& out) {
  socket_handle s = open_stream_socket(at.family());
  if (s == invalid_socket) return system_error_code(last_socket_error());
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
#if defined(SO_REUSEPORT)
  if (reuse_port) ::setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
#else
  (void)reuse_port;
#endif
  if (at.family() == AF_INET6) ::setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  // Linux passes TCP_NODELAY on to accepted sockets, saving a call per connection.
  set_nodelay(s);
  return bind_and_listen(s, at, out);
}

#endif

// The process's descriptor limit (RLIMIT_NOFILE, soft), 0 where there is none to read
// (Windows: sockets are handles, limited by memory).
inline std::uint64_t descriptor_limit() noexcept {
#if defined(_WIN32)
  return 0;
#else
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) != 0 || files.rlim_cur == RLIM_INFINITY) return 0;
  return static_cast<std::uint64_t>(files.rlim_cur);
#endif
}

inline std::error_code local_address(socket_handle s, address& out) {
  out.length = sizeof out.storage;
  if (::getsockname(s, out.get(), &out.length) != 0) return system_error_code(last_socket_error());
  return {};
}

// The outcome of a connect, once the socket reports ready.
inline std::error_code pending_socket_error(socket_handle s) noexcept {
  int e = 0;
  socklen_t len = sizeof e;  // MinGW's ws2tcpip.h defines socklen_t too
  if (::getsockopt(s, SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&e), &len) != 0) e = last_socket_error();
  return e ? system_error_code(e) : std::error_code{};
}

#if defined(_WIN32)
// ConnectEx wants a bound socket; the reactor starts the connect itself once the
// socket belongs to its completion port (reactor::connect), so `done` stays false.
inline std::error_code begin_connect(const address& to, socket_handle& out, bool& done) {
  socket_handle s = open_stream_socket(to.family());
  if (s == invalid_socket) return system_error_code(last_socket_error());
  set_nodelay(s);
  done = false;
  address any;
  any.storage.ss_family = static_cast<ADDRESS_FAMILY>(to.family());
  any.length = to.family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::bind(s, any.get(), any.length) != 0) {
    int e = last_socket_error();
    close_socket(s);
    return system_error_code(e);
  }
  out = s;
  return {};
}
#else
// Starts a non-blocking connect; `done` tells whether it completed at once.
inline std::error_code begin_connect(const address& to, socket_handle& out, bool& done) {
  socket_handle s = open_stream_socket(to.family());
  if (s == invalid_socket) return system_error_code(last_socket_error());
  set_nodelay(s);
  done = false;
  if (::connect(s, to.get(), to.length) == 0) {
    done = true;
  } else if (last_socket_error() != EINPROGRESS) {
    int e = last_socket_error();
    close_socket(s);
    return system_error_code(e);
  }
  out = s;
  return {};
}


inline socket_handle accept_one(socket_handle listener, address& peer) noexcept {
  peer.length = sizeof peer.storage;
#if defined(__linux__)
  return ::accept4(listener, peer.get(), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
  socket_handle s = ::accept(listener, peer.get(), &peer.length);
  if (s != invalid_socket) {
    if (!set_nonblocking(s)) {
      close_socket(s);
      errno = EAGAIN;
      return invalid_socket;
    }
    set_nodelay(s);
  }
  return s;
#endif
}

#endif

// ---- Files (--state-file): read whole, replaced atomically.

// The wall clock in milliseconds since 1970, for what outlives the process.
inline std::int64_t unix_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// `unix_ms` as UTC text, 2026-12-02T15:51:53.123Z: computed, not through gmtime, which
// is not thread-safe everywhere and differs between platforms.
inline std::string iso8601_utc(std::int64_t unix_ms) {
  std::int64_t ms = ((unix_ms % 86400000) + 86400000) % 86400000;
  std::int64_t days = (unix_ms - ms) / 86400000;
  // The proleptic Gregorian calendar in eras of 400 years, from 0000-03-01, so that
  // a leap day ends its year.
  days += 719468;
  std::int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  std::int64_t day_of_era = days - era * 146097;
  std::int64_t year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  std::int64_t day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  std::int64_t month_index = (5 * day_of_year + 2) / 153;  // from March
  std::int64_t day = day_of_year - (153 * month_index + 2) / 5 + 1;
  std::int64_t month = month_index < 10 ? month_index + 3 : month_index - 9;
  std::int64_t year = year_of_era + era * 400 + (month <= 2);
  char text[96];  // room for any 64-bit year, so that no compiler sees a truncation
  std::snprintf(text, sizeof text, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ", static_cast<long long>(year),
                static_cast<long long>(month), static_cast<long long>(day), static_cast<long long>(ms / 3600000),
                static_cast<long long>(ms / 60000 % 60), static_cast<long long>(ms / 1000 % 60),
                static_cast<long long>(ms % 1000));
  return text;
}

// Reads the file at `path` into `out`, at most `limit` bytes (errc::bad_option beyond).
// std::errc::no_such_file_or_directory when there is none.
inline std::error_code read_file(const std::string& path, std::string& out, std::size_t limit) {
  out.clear();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return {errno, std::generic_category()};
  char chunk[65536];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (out.size() + n > limit) {
      std::fclose(f);
      return make_error_code(errc::bad_option);
    }
    out.append(chunk, n);
  }
  bool failed = std::ferror(f) != 0;
  int e = errno;
  std::fclose(f);
  if (failed) return {e ? e : EIO, std::generic_category()};
  return {};
}

// Replaces the file at `path` with `content` so that a reader (or a crash) sees the old
// file or the new one, never a part: a temporary file beside it (PATH.tmp), written and
// flushed to disk, then renamed over it (MoveFileEx on Windows).
inline std::error_code replace_file(const std::string& path, std::string_view content) {
  std::string temporary = path + ".tmp";
#if defined(_WIN32)
  HANDLE h = ::CreateFileA(temporary.c_str(), GENERIC_WRITE, 0, nullptr, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (h == INVALID_HANDLE_VALUE) return {static_cast<int>(::GetLastError()), std::system_category()};
  std::size_t done = 0;
  DWORD failure = 0;
  while (done < content.size() && !failure) {
    DWORD wrote = 0;
    DWORD chunk = static_cast<DWORD>(std::min<std::size_t>(content.size() - done, 1u << 30));
    if (!::WriteFile(h, content.data() + done, chunk, &wrote, nullptr)) failure = ::GetLastError();
    done += wrote;
  }
  if (!failure && !::FlushFileBuffers(h)) failure = ::GetLastError();
  ::CloseHandle(h);
  // A reader that has the file open (without FILE_SHARE_DELETE) holds the rename
  // back: tried again for up to about 100 ms (on the state-file thread, never a loop).
  for (int attempt = 0; !failure; ++attempt) {
    if (::MoveFileExA(temporary.c_str(), path.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) break;
    DWORD e = ::GetLastError();
    if ((e != ERROR_ACCESS_DENIED && e != ERROR_SHARING_VIOLATION) || attempt == 20) failure = e;
    else ::Sleep(5);
  }
  if (failure) {
    ::DeleteFileA(temporary.c_str());
    return {static_cast<int>(failure), std::system_category()};
  }
  return {};
#else
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return {errno, std::generic_category()};
  std::size_t done = 0;
  int failure = 0;
  while (done < content.size() && !failure) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n > 0) done += static_cast<std::size_t>(n);
    else if (n < 0 && errno != EINTR) failure = errno;
  }
  if (!failure && ::fsync(fd) != 0) failure = errno;
  if (::close(fd) != 0 && !failure) failure = errno;
  if (!failure && ::rename(temporary.c_str(), path.c_str()) != 0) failure = errno;
  if (failure) {
    ::unlink(temporary.c_str());
    return {failure, std::generic_category()};
  }
  // The rename itself lasts once the directory is on disk too.
  std::string::size_type slash = path.rfind('/');
  std::string directory = slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
  int dir = ::open(directory.c_str(), O_RDONLY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return {};
#endif
}

// Backend ids must be unguessable: they come from the OS CSPRNG.
inline bool random_bytes(void* out, std::size_t n) noexcept {
  auto* p = static_cast<unsigned char*>(out);
#if defined(_WIN32)
  // RtlGenRandom lives in advapi32, which every Windows toolchain links by default.
  while (n > 0) {
    ULONG chunk = n > 0x10000000 ? 0x10000000 : static_cast<ULONG>(n);
    if (!::RtlGenRandom(p, chunk)) return false;
    p += chunk;
    n -= chunk;
  }
  return true;
#elif defined(__linux__)
  while (n > 0) {
    ssize_t got = ::getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
  ::arc4random_buf(p, n);
  return true;
#else
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  while (n > 0) {
    ssize_t got = ::read(fd, p, n);
    if (got <= 0) {
      if (got < 0 && errno == EINTR) continue;
      ::close(fd);
      return false;
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  ::close(fd);
  return true;
#endif
}

// 32 uppercase hex characters, as harmony.js agents expect.
inline std::string random_id() {
  unsigned char bytes[16];
  if (!random_bytes(bytes, sizeof bytes)) {
    // Without a CSPRNG there is nothing safe to fall back to but a loud, still-unique id.
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t c = ++counter;
    std::memset(bytes, 0, sizeof bytes);
    std::memcpy(bytes, &c, sizeof c);
  }
  static const char digits[] = "0123456789ABCDEF";
  std::string id(32, '0');
  for (int i = 0; i < 16; ++i) {
    id[2 * i] = digits[bytes[i] >> 4];
    id[2 * i + 1] = digits[bytes[i] & 15];
  }
  return id;
}

// ---- Blocking exchanges for the resolver thread (SRV queries): one request, one
// reply, within a deadline. Never on an event loop.
inline bool wait_socket(socket_handle s, bool for_write, std::int64_t deadline_ms) noexcept {
  for (;;) {
    std::int64_t left = deadline_ms - now_ms();
    if (left <= 0) return false;
#if defined(_WIN32)
    fd_set set;
    FD_ZERO(&set);
    FD_SET(s, &set);
    timeval tv{static_cast<long>(left / 1000), static_cast<long>(left % 1000 * 1000)};
    int n = ::select(0, for_write ? nullptr : &set, for_write ? &set : nullptr, nullptr, &tv);
#else
    pollfd p{s, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left, 60000)));
    if (n < 0 && errno == EINTR) continue;
#endif
    if (n != 0) return n > 0;
  }
}

// Sends `request` to `server` (a numeric address) and returns its reply: over UDP
// the first datagram, at most 64 KiB; over TCP (`stream`) with the two-byte length
// prefix of DNS over TCP, added to the request and taken off the reply.
inline std::error_code exchange_once(const endpoint& server, bool stream, const std::string& request,
                                     duration timeout, std::string& reply) {
  reply.clear();
  std::error_code failed = make_error_code(errc::resolve_failed);
  address at;
  if (resolve(server, at, false) || request.size() > 0xffff) return failed;
  std::int64_t deadline = now_ms() + timeout.count();
  socket_handle s = ::socket(at.family(), stream ? SOCK_STREAM : SOCK_DGRAM, 0);
  if (s == invalid_socket) return system_error_code(last_socket_error());
  std::error_code result = failed;
  std::string out = request;
  if (stream) {
    out.insert(0, 1, static_cast<char>(request.size() & 0xff));
    out.insert(0, 1, static_cast<char>(request.size() >> 8));
  }
  auto receive_all = [&](char* into, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      if (!wait_socket(s, false, deadline)) return false;
      ssize_t r = recv_some(s, into + got, n - got);
      if (r <= 0 && !(r < 0 && would_block(last_socket_error()))) return false;
      if (r > 0) got += static_cast<std::size_t>(r);
    }
    return true;
  };
  do {
    if (!set_nonblocking(s)) break;
    if (::connect(s, at.get(), at.length) != 0) {
      int e = last_socket_error();
#if defined(_WIN32)
      bool pending = e == WSAEWOULDBLOCK;
#else
      bool pending = e == EINPROGRESS;
#endif
      if (!pending || !wait_socket(s, true, deadline)) break;
    }
    std::size_t sent = 0;
    while (sent < out.size()) {
      if (!wait_socket(s, true, deadline)) break;
      ssize_t n = send_some(s, out.data() + sent, out.size() - sent);
      if (n < 0 && would_block(last_socket_error())) continue;
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    if (sent < out.size()) break;
    if (stream) {
      unsigned char length[2];
      if (!receive_all(reinterpret_cast<char*>(length), 2)) break;
      reply.resize((std::size_t{length[0]} << 8) | length[1]);
      if (!receive_all(&reply[0], reply.size())) break;
    } else {
      reply.resize(0xffff);
      if (!wait_socket(s, false, deadline)) break;
      ssize_t n = recv_some(s, &reply[0], reply.size());
      if (n < 0) break;
      reply.resize(static_cast<std::size_t>(n));
    }
    result = {};
  } while (false);
  close_socket(s);
  if (result) reply.clear();
  return result;
}

// The process's open descriptors, for the stats port: -1 where they cannot be counted.
inline long count_open_descriptors() {
#if defined(__linux__)
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  long n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the directory's own descriptor
#else
  return -1;
#endif
}

// Errors that say this host ran out of something (descriptors, buffers, memory),
// not that a peer failed.
inline bool is_local_resource_error(const std::error_code& e) noexcept {
  return e == std::errc::too_many_files_open || e == std::errc::too_many_files_open_in_system ||
         e == std::errc::no_buffer_space || e == std::errc::not_enough_memory;
}

// Backend ids are 32 uppercase hex digits, as random_id makes them.
inline bool is_backend_id(std::string_view id) noexcept {
  if (id.size() != 32) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return false;
  return true;
}

}  // namespace detail
}  // namespace harmony
