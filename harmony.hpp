// SPDX-License-Identifier: MIT
// harmony.hpp - a smart TCP load balancer in one header.
// Copyright (c) 2026 the Harmony authors. Licence text at the end of this file.
// Assembled from the parts in src/ by tools/assemble: edit those, not this file.
//
// Backends register over an admin port and ack that they are alive; every client
// connection is proxied to a backend chosen by weight and load, with persistence,
// a concurrency cap with a wait queue, requeue on failure and an "unavailable"
// reply when nobody can serve. A native re-creation of harmony.js (2014).
//
// CONTENTS (grep for the anchor)
//   >>config         configuration macros
//   >>version        version numbers, size defaults
//   >>errors         harmony::errc, error category
//   >>types          endpoint, durations, algorithm, logger
//   >>server         harmony::server (the balancer) and its options
//   >>client         harmony::client (a backend's agent) and its options
//   ---- implementation (only with HARMONY_IMPLEMENTATION or HARMONY_HEADER_ONLY)
//   >>platform       OS headers, socket helpers, randomness
//   >>util           logging, number parsing
//   >>errors-impl    the error category, the parsers of the public types, the option checks
//   >>net-address    sans-IO resolved address: family, 16 address bytes, port
//   >>os-address     the portable resolved address to and from the OS socket address
//   >>selector       sans-IO backend selection (weighted least-connections, round-robin)
//   >>sampler        sans-IO weighted random choice: a small PRNG, a Fenwick tree, power of two choices
//   >>maglev         sans-IO consistent hashing: a Maglev lookup table keyed by backend address
//   >>codec          sans-IO admin protocol: dialect detection, legacy tokens, native lines
//   >>proxy-header   sans-IO PROXY protocol v1 and v2 headers: written towards backends, read from upstream
//   >>affinity       sans-IO persistence table: client key -> backend lease, bounded, idle TTL
//   >>health         a backend's health: passive failure counting, one trial, back-off, active checks
//   >>state-file     sans-IO state file: the kept registry as versioned text, and back
//   >>registry       the backend table: sans-IO, shared between loops through locked<>
//   >>discovery      backends from DNS: what a name's new address set changes (sans-IO)
//   >>dns            sans-IO DNS messages: SRV queries, their answers, resolv.conf, SRV records to backends
//   >>crypto         sans-IO SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104), constant-time compare
//   >>stats-render   sans-IO stats: HTTP request lines, Prometheus text, JSON, the status page
//   >>commands       sans-IO admin command handling, both dialects: bytes in, reply and effects out
//   >>wait-queue     sans-IO FIFO of connections waiting for a concurrency slot
//   >>engine         the contract every engine implements: poller, connection, acceptor
//   >>pollers        the readiness pollers: epoll (edge-triggered) and poll (level-triggered)
//   >>iocp-poller    the completion engine's poller: an I/O completion port
//   >>reactor        one event loop: the engine's poller, timers, posted tasks, releases
//   >>pools          relay buffers and splice pipes, taken only while bytes are in flight
//   >>acceptor       what the engines' acceptors share
//   >>connection-core what the connections of both engine families share
//   >>readiness      the connection and the acceptor of the readiness engines (epoll, poll)
//   >>iocp           the connection and the acceptor of the completion engine (Windows)
//   >>stream         a buffered byte stream on a connection, for the admin port and the agent
//   >>pump           the proxy core: two connections, both directions, backpressure, half-close
//   >>resolver       the server's resolver thread: getaddrinfo and SRV queries off the event loops
//   >>state-keeper   the server's state-file thread: writes the kept registry off the event loops
//   >>server-state   the state a server shares between its loops
//   >>worker         one event loop: accept, admit, pick, and the host of its sessions
//   >>checker        the health monitor: the registry's sweep and the active checks, on the first loop
//   >>admin          the admin port: legacy (harmony.js) and native dialects
//   >>stats          the stats port: /metrics, /status.json and the status page, on the first loop
//   >>server-impl    harmony::server
//   >>reconfigure    server::reconfigure: a running server takes new options
//   >>upgrade        handing the listening sockets and the registry to a successor process
//   >>client-impl    harmony::client: one event loop, one link per balancer
//   >>admin-call     harmony::admin_command: one operator command, handshake included
//   >>licence        MIT
//
// >>config  configuration macros
//   HARMONY_IMPLEMENTATION  define in exactly one translation unit before including this
//                           header: that unit compiles the implementation (and includes
//                           the OS socket headers); every other unit sees declarations only.
//   HARMONY_HEADER_ONLY     define (globally) to compile the implementation, as inline
//                           functions, in every unit that includes the header.
//   HARMONY_USE_EPOLL, HARMONY_USE_POLL, HARMONY_USE_IOCP
//                           force one reactor backend (implementation unit only). The
//                           default is epoll on Linux, IOCP on Windows, poll elsewhere;
//                           HARMONY_USE_POLL on Linux selects the portable poll(2) backend.
//   HARMONY_DEFAULT_BUFFER_BYTES       relay buffer per direction (default 16384).
//   HARMONY_DEFAULT_BULK_BUFFER_BYTES  relay buffer of a streaming direction (default 262144).
//
// Windows: link ws2_32 and mswsock (MSVC takes them from this header), and with MinGW
// link -static or ship libwinpthread-1.dll. Only the implementation unit includes
// <windows.h>, before or after the program's own.
//
// Thread-safety: every public member function of harmony::server and harmony::client
// may be called from any thread. Callbacks run on the object's own event-loop thread.
// The library throws no exceptions and works with -fno-exceptions.

#ifndef HARMONY_HPP
#define HARMONY_HPP

// >>version  version numbers, size defaults
#define HARMONY_VERSION_MAJOR 0
#define HARMONY_VERSION_MINOR 1
#define HARMONY_VERSION_PATCH 0
#define HARMONY_VERSION (HARMONY_VERSION_MAJOR * 10000 + HARMONY_VERSION_MINOR * 100 + HARMONY_VERSION_PATCH)

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#ifndef HARMONY_DEFAULT_BUFFER_BYTES
#define HARMONY_DEFAULT_BUFFER_BYTES 16384
#endif
#ifndef HARMONY_DEFAULT_BULK_BUFFER_BYTES
#define HARMONY_DEFAULT_BULK_BUFFER_BYTES 262144
#endif

namespace harmony {

// >>errors  harmony::errc, error category
// One list gives the enumerators and their messages.
#define HARMONY_ERRORS(X)                                                                  \
  X(bad_address, "malformed address (expected HOST:PORT or [IPv6]:PORT)")                  \
  X(resolve_failed, "cannot resolve host name")                                            \
  X(bad_option, "invalid option value")                                                    \
  X(bad_duration, "malformed duration (expected e.g. 500ms, 30s, 1m, 2h)")                 \
  X(unknown_backend, "unknown backend id")                                                 \
  X(too_many_backends, "backend limit reached")                                            \
  X(no_backend, "no eligible backend")                                                     \
  X(attempts_exhausted, "every backend attempt failed")                                    \
  X(queue_full, "wait queue is full")                                                      \
  X(queue_timeout, "timed out in the wait queue")                                          \
  X(connect_timeout, "backend connect timed out")                                          \
  X(backend_reset, "backend closed the connection before any byte")                        \
  X(already_running, "already running")                                                    \
  X(not_running, "not running")                                                            \
  X(shutting_down, "shutting down")                                                        \
  X(protocol, "malformed admin message")                                                   \
  X(unauthorized, "authentication required or failed")

enum class errc : int {
  ok = 0,
#define HARMONY_ENUM_ITEM(name, text) name,
  HARMONY_ERRORS(HARMONY_ENUM_ITEM)
#undef HARMONY_ENUM_ITEM
};

const std::error_category& error_category() noexcept;
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

}  // namespace harmony

template <>
struct std::is_error_code_enum<harmony::errc> : std::true_type {};

namespace harmony {

// >>types  endpoint, durations, algorithm, logger
using duration = std::chrono::milliseconds;

// A host (name, IPv4 or IPv6 literal) and a port. Text form: HOST:PORT or [IPv6]:PORT.
struct endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};

// Parses HOST:PORT / [IPv6]:PORT; port 0 is allowed (an ephemeral port when listening).
std::error_code parse_endpoint(std::string_view text, endpoint& out);
// Parses 500ms, 30s, 1m, 2h, or a bare number of milliseconds.
std::error_code parse_duration(std::string_view text, duration& out);
// The same where people type durations (harmonyd's flags): the unit is required, so
// that `10` is not silently 10 ms; only 0 may stand alone. errc::bad_duration otherwise.
std::error_code parse_duration_with_unit(std::string_view text, duration& out);
// The text parse_duration reads back: the largest unit that divides exactly (2h, 1m,
// 30s, 500ms; zero is 0s).
std::string format_duration(duration d);
// Parses a decimal integer, optionally negative, from low to high (errc::bad_option
// when it is not a number or is outside the range).
std::error_code parse_integer(std::string_view text, long long low, long long high, long long& out) noexcept;

// Weights are relative shares of traffic: 500, 500 and 1000 take 25%, 25% and 50%.
// The one definition of their range, checked wherever a weight comes in.
inline constexpr int min_weight = 1;
inline constexpr int max_weight = 1 << 20;  // keeps every product the selector forms within 63 bits
inline constexpr int default_weight = 500;  // harmony.js's default
// Parses a weight from min_weight to max_weight (errc::bad_option otherwise).
std::error_code parse_weight(std::string_view text, int& out);

enum class algorithm {
  leastconn,   // minimise active/weight; ties go by smooth weighted round-robin
  roundrobin,  // smooth weighted round-robin
  random,      // weighted power of two choices: two drawn by weight, the less loaded taken
  hash,        // consistent hashing of the client address (Maglev table), the same on every balancer
};
// The Maglev lookup table of `hash`: a prime number of entries, shared out among the
// backends in proportion to their weights.
inline constexpr std::uint32_t hash_table_size = 65537;
std::error_code parse_algorithm(std::string_view text, algorithm& out);
const char* to_string(algorithm a) noexcept;

// The PROXY protocol (HAProxy's proxy-protocol.txt) spoken ahead of a connection's own
// bytes, so that the far end learns the client's address: not at all, the text line
// (v1) or the binary header (v2).
enum class proxy_protocol : std::uint8_t { none, v1, v2 };
std::error_code parse_proxy_protocol(std::string_view text, proxy_protocol& out);  // "none", "v1", "v2"
const char* to_string(proxy_protocol p) noexcept;
inline constexpr std::size_t proxy_v1_max = 107;  // the longest v1 header line, CRLF included

enum class log_level { trace, debug, info, warn, error, off };
using log_function = std::function<void(log_level, std::string_view message)>;
const char* to_string(log_level l) noexcept;
std::error_code parse_log_level(std::string_view text, log_level& out);
// Whether a message at `level` passes a logger set to `threshold` (off passes nothing).
bool log_enabled(log_level threshold, log_level level) noexcept;

// What check(server_options) or check(client_options) found wrong: the option by its
// member name, and why, e.g. {"workers", "must be from 1 to 256"}.
struct option_problem {
  const char* option = nullptr;  // nullptr when every option is valid
  std::string reason;
};

// A client connection that could not be served, handed to the unavailable callback.
class rejected_connection {
 public:
  // The client's address, e.g. "127.0.0.1:53211".
  const std::string& peer() const noexcept { return peer_; }
  // Queues bytes to send before the connection is closed.
  void send(std::string_view bytes) { reply_.append(bytes.data(), bytes.size()); }

 private:
  friend struct rejected_access;
  std::string peer_;
  std::string reply_;
};

}  // namespace harmony

namespace harmony {

// >>server  harmony::server (the balancer) and its options
struct backend_info {
  std::string id;
  endpoint address;
  int weight = 0;
  int maxconn = 0;              // at most this many open connections; 0: no limit
  bool backup = false;          // serves only while no primary backend can
  int active = 0;               // proxied connections open now
  std::uint64_t total = 0;      // connections ever sent
  std::uint64_t failures = 0;   // failed connect attempts
  bool eligible = false;        // would receive a new connection now
  bool draining = false;
  // "up" (eligible), "full" (at its maxconn), "draining", "down" (its agent reports it
  // down, or health detection took it out: server_options::max_fails, check_interval), "expired" (no ack within the host timeout), "offline" (its agent's connection
  // dropped), "no-port" (no service port yet)
  std::string state;
  // The NAME:PORT it was resolved from (server::add_backend_name); empty otherwise.
  std::string source;
  proxy_protocol proxy = proxy_protocol::none;  // the header it is sent first (backend_options::proxy)
  // Bytes of the connections it served, counted as each connection ends: client to
  // backend (in) and backend to client (out).
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
};

// The limit of backend_options::maxconn (and of `maxconn=` on the admin port).
inline constexpr int max_maxconn = 1 << 24;  // more connections than any descriptor limit allows

// How a static backend takes traffic (server::add_backend).
struct backend_options {
  int weight = default_weight;  // min_weight … max_weight
  // A backend with maxconn open connections gets no new one until one ends; when
  // every backend that could serve is at its limit, new connections wait in the
  // concurrency queue (queue_timeout, queue_limit). 0: no limit.
  int maxconn = 0;
  // Backups get connections only while no primary backend can take one (none is
  // eligible, or every eligible one is at its maxconn).
  bool backup = false;
  // The PROXY protocol header sent ahead of the client's bytes on every connection to
  // it (every attempt, a requeued one too): the client's address and port, and the
  // address and port the client connected to. The backend must expect it.
  proxy_protocol proxy = proxy_protocol::none;
};

struct server_stats {
  std::uint64_t accepted = 0;
  std::uint64_t active = 0;
  std::uint64_t queued = 0;
  std::uint64_t unavailable = 0;
  std::uint64_t connect_failures = 0;
  std::uint64_t bytes_in = 0;   // client to backend
  std::uint64_t bytes_out = 0;  // backend to client
  std::uint64_t bytes_spliced = 0;  // of bytes_in and bytes_out, those moved by splice (Linux)
  std::uint64_t refused = 0;        // closed at once: over max_conns_per_client
  std::uint64_t bad_proxy_headers = 0;  // reset: no valid PROXY header (accept_proxy)
};

// What became of one client connection, handed to server_options::on_access when it
// ends (an access log: format_access_entry).
struct access_entry {
  std::string client;              // HOST:PORT; with accept_proxy, what the PROXY header announced
  std::string via;                 // with accept_proxy: the upstream proxy's HOST:PORT; empty otherwise
  std::vector<std::string> tried;  // HOST:PORT of each backend whose attempt failed, in order
  std::string backend;             // HOST:PORT of the backend that served it; empty when none did
  std::uint64_t bytes_in = 0;      // client to backend
  std::uint64_t bytes_out = 0;     // backend to client
  duration queued{0};              // time spent in the wait queue
  duration lasted{0};              // from its accept to its end
  // How it ended: "closed" (both sides finished), "client-reset" or "backend-reset"
  // (that side failed: `reason` says how), "idle-timeout", "unavailable" (`reason`
  // says why), "refused" (max_conns_per_client), "bad-proxy-header" (accept_proxy:
  // `reason` says what is wrong), "shutdown" (the server stopped), "error" (this host
  // could not serve it: `reason`).
  const char* end = "";
  std::string reason;
};
// The access log line of `e` (no newline), ended at `unix_ms` (ms since 1970), in the
// stable format README "Access log" documents: space-separated key=value fields in a
// fixed order, `-` for an empty value, `reason` last and quoted.
std::string format_access_entry(const access_entry& e, std::int64_t unix_ms);

// The ranges of server_options, defined once: check() and the daemon's flags use them.
inline constexpr int min_workers = 1;
inline constexpr int max_workers = 256;
inline constexpr int min_concurrency = -1;  // -1 no limit, 0 paused, N at most N proxied
inline constexpr int max_concurrency = std::numeric_limits<int>::max();
inline constexpr int max_requeue = 1000;
inline constexpr std::size_t max_queue_limit = 100000000;
inline constexpr duration max_slow_start{3600000};  // slow_start, from 0 (off) to 1h
inline constexpr std::size_t max_buffer_bytes = std::size_t{1} << 30;  // buffer_bytes (at least 1), bulk_buffer_bytes
// How often the names of add_backend_name are resolved again. 5 s is the TTL CoreDNS
// gives a Kubernetes headless service's records (Consul DNS gives 0 by default).
inline constexpr duration default_resolve_interval{5000};
inline constexpr duration min_resolve_interval{100};
inline constexpr duration max_resolve_interval{86400000};
// The limits of server_options (see there).
inline constexpr std::size_t default_max_backends = 10000;
inline constexpr std::size_t max_max_backends = 10000000;
inline constexpr std::size_t default_max_admin_connections = 256;
inline constexpr std::size_t max_max_admin_connections = 1000000;
inline constexpr std::size_t default_max_admin_line = 4096;
inline constexpr std::size_t min_max_admin_line = 256;  // a register line with every option fits
inline constexpr std::size_t max_max_admin_line = 1 << 20;
inline constexpr std::size_t legacy_max_token = 256;    // a harmony.js id is 32 characters
inline constexpr std::size_t max_max_connections = 100000000;
// The max_connections that 0 stands for, given the descriptor limit (0: none known):
// two descriptors per proxied connection after a reserve for listeners, the admin
// connections, the poller and the log.
std::size_t derived_max_connections(std::uint64_t descriptor_limit, std::size_t max_admin_connections) noexcept;

// Health detection (server_options::max_fails and the options after it). Passive
// detection takes nginx's defaults: one failed attempt (max_fails=1) takes a backend
// out for fail_timeout=10s, then one trial connection decides; each failed trial
// doubles the time out, up to max_fail_backoff. Active checks take HAProxy's rise 2
// and fall 3.
inline constexpr int default_max_fails = 1;
inline constexpr int max_max_fails = 1000;
inline constexpr duration default_fail_timeout{10000};
inline constexpr duration min_fail_timeout{10};
inline constexpr duration max_fail_timeout{3600000};
inline constexpr duration max_fail_backoff{300000};  // the longest time out after failed trials (at least fail_timeout)
inline constexpr duration min_check_interval{10};
inline constexpr duration max_check_interval{3600000};
inline constexpr int default_check_rise = 2;
inline constexpr int default_check_fall = 3;
inline constexpr int max_check_rise_fall = 1000;
inline constexpr std::size_t max_check_text = 4096;  // check_send, check_expect

// server::shutdown()'s deadline (server_options::drain_timeout), from 0 (stop at once) to a day.
inline constexpr duration default_drain_timeout{30000};
inline constexpr duration max_drain_timeout{86400000};

// What a graceful stop (server::shutdown) found and did.
struct drain_report {
  std::uint64_t open = 0;      // client connections open (or queued) when it began
  std::uint64_t finished = 0;  // of those and any still being taken in, the ones that ended on their own
  std::uint64_t cut = 0;       // closed at the deadline (or by stop())
};

// Listening sockets a process hands to its successor (server::hand_out), as native
// descriptors; -1: none. POSIX only.
struct inherited_sockets {
  std::vector<std::int64_t> listen;  // one per loop with SO_REUSEPORT (workers > 1), otherwise one
  std::int64_t admin = -1;
  std::int64_t stats = -1;
};

struct server_options {
  std::string listen = "127.0.0.1:3000";  // where clients connect
  std::string admin = "127.0.0.1:1666";   // where backends register; empty: no admin port
  algorithm balance = algorithm::leastconn;
  bool persistent = true;                 // a client address keeps its backend
  int concurrency = -1;                   // -1 unlimited, 0 paused, N at most N proxied
  int requeue = 1;                        // extra attempts on other backends after a failure
  std::string unavailable;                // written to a client nobody can serve
  // Called instead of writing `unavailable`; `why` is errc::no_backend, attempts_exhausted,
  // queue_full or queue_timeout. Runs on the loop thread.
  std::function<void(std::error_code why, rejected_connection& client)> on_unavailable;
  // Called on the loop thread when a backend connect fails (refused, timed out, reset).
  std::function<void(const std::string& backend_id, std::error_code error)> on_backend_error;
  duration host_timeout{60000};     // backend ineligible when its last ack is older
  duration connect_timeout{5000};   // a backend connect that hangs longer is a failure (positive)
  duration idle_timeout{600000};    // a proxied connection without traffic is closed; 0: never
  duration queue_timeout{30000};    // longest wait in the concurrency queue
  // A backend that joins or comes back ramps its effective weight from 1/16 up to its
  // weight over this long, so leastconn does not flood it; 0 (the default) is off.
  duration slow_start{0};
  std::size_t queue_limit = 10000;  // longest concurrency queue
  duration resolve_interval = default_resolve_interval;  // names of add_backend_name are resolved again this often
  // Where SRV names of add_backend_name are asked: ADDRESS, ADDRESS:PORT or [IPv6]:PORT
  // (port 53 by default). Empty: the name servers of /etc/resolv.conf (on Windows,
  // SRV names need one given here). Host names always go through getaddrinfo.
  std::vector<std::string> nameservers;
  std::size_t buffer_bytes = HARMONY_DEFAULT_BUFFER_BYTES;            // relay buffer per direction
  std::size_t bulk_buffer_bytes = HARMONY_DEFAULT_BULK_BUFFER_BYTES;  // once a direction streams
  // Linux: a streaming direction moves socket to pipe to socket inside the kernel
  // (splice(2), pooled pipes) instead of through a buffer: less CPU per byte, but
  // over loopback the receiver gets smaller segments (see README, Performance).
  // Used on the server's own threads (they block SIGPIPE) and on a thread calling
  // run() where SIGPIPE is ignored or blocked. Ignored elsewhere.
  bool splice = false;
  int workers = 1;                  // event-loop threads sharing the listen port
  // ---- Health of every backend (registered, static and from DNS).
  // Passive detection, on by default: an attempt that fails (refused, connect timeout,
  // reset before the backend's first byte) counts against its backend; max_fails of
  // them within fail_timeout (a success in between starts the count again) take it
  // out of rotation for fail_timeout. Then exactly
  // one connection is let through as its trial: when the backend answers it (first
  // byte), the backend is up again; when it fails, it is out again for twice as long
  // as the last time, up to max_fail_backoff. The failed client itself is requeued
  // (requeue). state "down" in backends() while out. max_fails = 0 turns it off.
  int max_fails = default_max_fails;          // 0 … max_max_fails
  duration fail_timeout = default_fail_timeout;  // min_fail_timeout … max_fail_timeout
  // Active checks, off by default (check_interval 0): every check_interval each
  // backend is probed with a TCP connect on the first event loop, the probes spread
  // over the interval; a probe that is not done within min(connect_timeout,
  // check_interval) fails. With check_send, those bytes are sent once connected; with
  // check_expect, the reply must contain those bytes within that time (a probe with
  // neither passes once connected). check_fall failed probes in a row mark a backend
  // "down", check_rise passing ones in a row bring it back; a passing probe also
  // lets a passively failed backend take its trial at once.
  duration check_interval{0};                 // 0 (off) or min_check_interval … max_check_interval
  std::string check_send;                     // at most max_check_text bytes
  std::string check_expect;                   // at most max_check_text bytes
  int check_rise = default_check_rise;        // 1 … max_check_rise_fall
  int check_fall = default_check_fall;        // 1 … max_check_rise_fall
  // ---- end of health
  // ---- Limits (each has a harmonyd flag; each is logged when it is hit, rate-limited).
  std::size_t max_backends = default_max_backends;                  // registrations beyond this are refused
  std::size_t max_admin_connections = default_max_admin_connections;  // admin connections beyond this are closed
  duration admin_timeout{30000};             // an admin connection silent this long is closed
  // A native admin line longer than this gets `err line-too-long` and the connection is
  // closed; a legacy token is limited to legacy_max_token bytes, whatever this says.
  std::size_t max_admin_line = default_max_admin_line;
  // Client connections open at once (queued or proxied). At the limit the listener stops
  // accepting: new connections wait in the kernel's backlog until one ends (with IOCP,
  // the few accepts already posted complete, and are held unserved the same way). 0: derived from the descriptor
  // limit as HAProxy derives maxconn, (RLIMIT_NOFILE - reserve) / 2 with a reserve of
  // 64 + max_admin_connections (see derived_max_connections); 10000 where there is none.
  std::size_t max_connections = 0;
  // Client connections open at once from one client address (IPv4, or IPv6 address);
  // one more is closed at once, counted in server_stats::refused. 0: no limit.
  std::size_t max_conns_per_client = 0;
  // ---- end of the limits
  // The listen port is behind another proxy that speaks the PROXY protocol (v1 or v2,
  // told apart by their first bytes): every connection must begin with its header,
  // and the address it announces is the client's for persistence, hashing,
  // max_conns_per_client, the logs and backends' own PROXY headers. A connection
  // without a valid header within connect_timeout is reset (logged, rate-limited,
  // counted in server_stats::bad_proxy_headers). Needs buffer_bytes >= 107 (the longest
  // v1 header, whose end only shows once read).
  bool accept_proxy = false;
  // Called on the connection's loop thread as each client connection ends (an access
  // log): one call per connection that was accepted, whatever became of it.
  std::function<void(const access_entry&)> on_access;
  // Where the stats port listens (HTTP: /metrics for Prometheus, /status.json, and a
  // status page at /); empty (the default): none. Keep it on loopback or a private
  // network: it shows every backend's address and takes no password.
  std::string stats;
  // Authentication of the admin port (docs/admin-protocol.md, README "Exposing the admin port").
  // With a secret, a native connection must answer the nonce of `hello` with
  // `auth PROOF` (PROOF: hex of HMAC-SHA256(secret, "harmony/1 auth " + nonce)) before
  // any other command, and the legacy (harmony.js) dialect, which cannot
  // authenticate, is refused except from the blocks in allow_legacy. Empty: no
  // authentication, both dialects open to whoever reaches the port.
  std::string admin_secret;
  // CIDR blocks ("10.1.0.0/16", "fd00::/8"; a bare address is one host) whose
  // harmony.js agents are still accepted while a secret is set.
  std::vector<std::string> allow_legacy;
  log_function log;                 // silent when empty
  log_level level = log_level::info;

  // ---- Keeping what it has across a stop and a restart (README, "Stopping and restarting").
  // The deadline shutdown() gives the connections in flight when it is called without one;
  // 0 stops at once.
  duration drain_timeout = default_drain_timeout;
  // Where the registry of backends that registered over the admin port is kept: written
  // atomically (a temporary file beside it, fsync, rename) on a thread of the server's own
  // shortly after each change (at most once a second) and when the server stops, and read
  // when it starts, so agents that ack after a restart are known with their id, weight and
  // port. A file that cannot be read, or lines that cannot be parsed, are logged (file and
  // line) and skipped. Empty (the default): nothing is kept.
  std::string state_file;

  // ---- An upgrade without refusing a connection (README, "Upgrading"). POSIX only.
  // Listening sockets to take over instead of binding listen, admin and stats: those the
  // process before handed out. Its listeners keep their backlogs, so no client that
  // connects while one process hands over to the next is refused. A loop without an
  // inherited listener binds one beside the first (SO_REUSEPORT); extra ones are closed.
  inherited_sockets inherited;
  // A registry to start from instead of state_file's: the file server::save_state wrote
  // (the state file format), read once at start() and never written.
  std::string restore_from;
};

// Checks every option against its range, as server::start() and run() do: errc::bad_address
// for a malformed listen or admin address, errc::bad_option for another bad value, with what
// is wrong in `problem` when it is given. Resolves no name, opens nothing.
std::error_code check(const server_options& options, option_problem* problem = nullptr);

class server {
 public:
  explicit server(server_options options = {});
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Binds the ports and runs the event loops on threads of its own. When it fails and
  // `problem` is given, it says which option the failure belongs to ("listen", "admin"
  // for a port that cannot be bound, with the address in the reason).
  std::error_code start(option_problem* problem = nullptr);
  // Binds the ports and runs the first event loop on the calling thread until stop().
  std::error_code run(option_problem* problem = nullptr);
  // Stops accepting, closes every connection and joins the threads. Idempotent.
  void stop();
  // A graceful stop, like HAProxy's soft-stop. At once: the listen sockets close (new
  // clients are refused; ones the kernel had not yet handed over are reset). Connections
  // being proxied go on, and so do those waiting in the concurrency queue: they are still
  // served if a slot or a backend frees up before the deadline. The admin port stays open
  // meanwhile, so agents still ack and deregister and operators can watch `stats`. When the
  // last connection has ended, or at `deadline` (then the rest are closed), the server stops
  // as stop() does: run() returns, the threads are joined and the state file is written.
  // Logs one line when it begins (connections open) and one when it ends (finished, cut).
  // Blocks until then; from one of the server's own callbacks it only begins the drain and
  // returns at once (report.open set). A stop() or a shorter shutdown() from another thread
  // cuts a drain short. Does nothing (and reports zeros) when the server is not running.
  drain_report shutdown(duration deadline);
  drain_report shutdown();  // with server_options::drain_timeout

  // ---- An upgrade (server_options::inherited, restore_from). POSIX only (elsewhere
  // std::errc::not_supported).
  // Duplicates of the listening sockets (listen, admin, stats), close-on-exec cleared,
  // for a successor process to inherit; the caller closes them once it has started it.
  std::error_code hand_out(inherited_sockets& out);
  // Writes the registry as a state file (atomically) to `path`, for restore_from.
  std::error_code save_state(const std::string& path);
  // The successor serves: the state writer stops (without a last write: the state file
  // is the successor's now), the admin and stats ports close (admin connections too, so
  // agents register with the successor), then it drains and stops like shutdown(); the
  // listeners close without resetting anything, their sockets live on in the successor.
  drain_report hand_over(duration deadline);

  // Applies `next` to the server as it runs, as a reload: what check() refuses is
  // refused (nothing changes). Open connections go on; the registry, persistence and
  // counters are kept. Applied at once: balance, persistent, concurrency, requeue,
  // unavailable, on_unavailable, on_backend_error, accept_proxy, on_access, the timeouts (host, connect, idle,
  // queue, admin, drain: an open connection takes a new one when its timer fires; one
  // that began with no idle timeout keeps none), slow_start, queue_limit, health detection and the active
  // checks, the limits (max_backends, max_admin_connections, max_admin_line,
  // max_connections: raising it resumes paused listeners; max_conns_per_client counts
  // the connections accepted from then on) and level. A changed `listen` is bound
  // first (on failure that error is returned and nothing changes), then each loop
  // takes in what waits in the old listener's backlog and closes it: no connection
  // that reached the old address is refused (on Windows a changed listen needs a
  // restart). The options a running server cannot change (workers, admin, stats,
  // buffer_bytes, bulk_buffer_bytes, splice, state_file, admin_secret, allow_legacy,
  // resolve_interval, nameservers; the log function is always kept) keep their value
  // and, when `next` differs, are named in `needs_restart` as check() names them.
  // Before start() every option is taken. errc::shutting_down during a drain;
  // resource_deadlock_would_occur from one of the server's own callbacks.
  std::error_code reconfigure(const server_options& next, std::vector<std::string>* needs_restart = nullptr);

  // Bound addresses (useful with port 0); empty before start().
  endpoint listen_endpoint() const;
  endpoint admin_endpoint() const;
  endpoint stats_endpoint() const;

  // Static backends, managed through the API. `address` is HOST:PORT. Returns the new id.
  std::error_code add_backend(std::string_view address, int weight, std::string* id_out = nullptr);
  // The same with a connection limit and the backup role (backend_options).
  std::error_code add_backend(std::string_view address, const backend_options& options, std::string* id_out = nullptr);
  // Backends from DNS. `address` is NAME:PORT: every address NAME resolves to (IPv4 and
  // IPv6, getaddrinfo) is a static backend with that port and weight, and the name is
  // resolved again every resolve_interval on a thread of the server's own, never on an
  // event loop. An address that appears is added; one that disappears gets no new
  // connections (state "draining") and is removed once its last connection has ended;
  // when resolution fails the last good set is kept (logged once when it starts failing
  // and once when it recovers). backends() shows each one with `source` = NAME:PORT.
  // Callable before start() and while running (the name is resolved at once then).
  // An SRV name (_service._tcp.NAME, no port: its first label starts with "_") is
  // asked for its SRV records (server_options::nameservers): each target's addresses
  // are backends at the record's port with the record's weight (`weight` is not
  // used; when every record has weight 0 each gets default_weight); records of the
  // lowest priority are primaries, the others backups.
  // errc::bad_address for a malformed NAME:PORT, errc::bad_option for port 0 or a bad weight.
  std::error_code add_backend_name(std::string_view address, int weight = default_weight);
  // The same with a connection limit and the backup role for every backend of the
  // name (an SRV name's records still decide its backups: a record of more than the
  // lowest priority is one whatever `options.backup` says).
  std::error_code add_backend_name(std::string_view address, const backend_options& options);
  std::error_code remove_backend(std::string_view id);
  std::error_code set_weight(std::string_view id, int weight);
  // Drained backends get no new connections; open ones finish.
  std::error_code drain(std::string_view id, bool on = true);
  std::error_code set_concurrency(int limit);
  std::vector<backend_info> backends() const;
  server_stats stats() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace harmony

namespace harmony {

// >>client  harmony::client (a backend's agent) and its options
// The agent a backend runs: it registers with the admin port of one balancer or
// of several (native dialect), keeps one connection open to each with heartbeats
// both ways, reconnects to each on its own with backoff when that balancer
// restarts or the network drops, and registers again under the same id.

// What an agent says of its backend (HAProxy's agent-check states): `ready` takes
// new connections; `drain` takes none while the open ones finish; `down` is not
// eligible at all. An operator's drain is separate and comes on top.
enum class readiness { ready, drain, down };
const char* to_string(readiness r) noexcept;
// Parses "ready", "drain" or "down" (errc::bad_option otherwise).
std::error_code parse_readiness(std::string_view text, readiness& out);

// The most balancers one agent registers with.
inline constexpr std::size_t max_balancers = 64;
// An agent's reported connection limit (maxconn) is 0 (no limit) to max_maxconn (>>server).

struct client_options {
  std::string balancer = "localhost:1666";  // the balancer's admin address
  // Several balancers: the agent registers with each, with the same id everywhere.
  // When not empty it replaces `balancer`.
  std::vector<std::string> balancers;
  std::uint16_t port = 80;                  // the service port this backend serves on
  std::string host;                         // empty: the balancer uses this connection's peer address
  int weight = default_weight;
  int maxconn = 0;                          // reported connection limit; 0: none
  readiness state = readiness::ready;       // reported on (re)registration
  // The PROXY protocol header this backend expects ahead of each client's bytes
  // (backend_options::proxy), asked for on registration.
  proxy_protocol proxy = proxy_protocol::none;
  // How often the agent reports alive; keep it at most half the balancer's host timeout.
  duration ack{20000};
  duration reconnect_min{100};  // backoff after a failed connection, doubling up to max
  duration reconnect_max{5000};
  // On the agent's thread, each time a balancer registers it, with the id that balancer
  // knows it by.
  std::function<void(const std::string& id)> on_registered;
  // The balancers' admin secret (server_options::admin_secret); empty: none. With it the
  // agent answers each balancer's nonce (`auth PROOF`) before it registers there.
  std::string secret;
  log_function log;
  log_level level = log_level::info;
};

// Checks every option, as client::start() does: errc::bad_address for a malformed balancer
// address, errc::bad_option for another bad value (port 0, a weight outside min_weight to
// max_weight, a maxconn outside 0 to max_maxconn, a balancer listed twice or more than
// max_balancers, a duration that is not positive, a host with spaces), with what is wrong in
// `problem` when it is given.
std::error_code check(const client_options& options, option_problem* problem = nullptr);

// One balancer as the agent sees it (client::status()).
struct balancer_status {
  std::string balancer;            // its admin address, as configured
  std::string id;                  // the id it knows this backend by; empty before it registered
  bool registered = false;         // registered on a live connection now
  std::uint64_t registrations = 0; // how often it registered (the first time and after each reconnect)
};

class client {
 public:
  explicit client(client_options options = {});
  ~client();  // close()
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Runs the agent on a thread of its own; it connects to every balancer and keeps registering.
  std::error_code start();
  // Deregisters from every balancer now (they send no new connections; open ones
  // finish) and stops. Waits up to about two seconds in all for the balancers to confirm.
  std::error_code close();
  // Changes the weight, now on every balancer and for later registrations.
  std::error_code set_weight(int weight);
  // Reports the backend ready, draining or down, now and after later registrations.
  std::error_code set_state(readiness state);
  // Reports a connection limit (0: none), now and after later registrations.
  std::error_code set_maxconn(int maxconn);
  // The agent's identity: the id the first balancer gave it, under which it asks every
  // other balancer to register it. Empty before the first registration.
  std::string id() const;
  bool registered() const;  // registered with at least one balancer on a live connection now
  std::vector<balancer_status> status() const;  // one entry per balancer, in the configured order

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

// One operator command on a balancer's admin port, as `harmonyd ctl` sends it: connects to
// `admin` (HOST:PORT), says hello, answers the balancer's nonce with `secret` when it asks
// for a proof, sends `command` (one line, e.g. "list" or "drain ID") and puts every line of
// the reply in `reply`. Blocks the calling thread, at most `timeout` in all. {} when the
// reply ends with "ok ..." (or is "pong"); errc::unauthorized when the balancer wanted a
// secret or refused the proof; errc::protocol for an "err ..." reply or a connection that
// ends without one; the connect error, or std::errc::timed_out, otherwise.
// The answer to a balancer's `hello` nonce, for an agent or tool of your own: the hex of
// HMAC-SHA256(secret, "harmony/1 auth " + nonce), sent as `auth PROOF`.
std::string admin_proof(std::string_view secret, std::string_view nonce);

std::error_code admin_command(std::string_view admin, std::string_view command, std::string* reply = nullptr,
                              std::string_view secret = {}, duration timeout = duration{10000});

}  // namespace harmony

#if defined(HARMONY_IMPLEMENTATION) || defined(HARMONY_HEADER_ONLY)
#ifndef HARMONY_IMPLEMENTATION_INCLUDED
#define HARMONY_IMPLEMENTATION_INCLUDED
// ============================================================================
// IMPLEMENTATION
// ============================================================================
#if defined(HARMONY_HEADER_ONLY)
#define HARMONY_DEF inline
#else
#define HARMONY_DEF
#endif

#if (defined(HARMONY_USE_EPOLL) + defined(HARMONY_USE_POLL) + defined(HARMONY_USE_IOCP)) > 1
#error "harmony: define at most one of HARMONY_USE_EPOLL, HARMONY_USE_POLL, HARMONY_USE_IOCP"
#endif
#if !defined(HARMONY_USE_EPOLL) && !defined(HARMONY_USE_POLL) && !defined(HARMONY_USE_IOCP)
#if defined(_WIN32)
#define HARMONY_USE_IOCP
#elif defined(__linux__)
#define HARMONY_USE_EPOLL
#else
#define HARMONY_USE_POLL
#endif
#endif
#if defined(HARMONY_USE_EPOLL) && !defined(__linux__)
#error "harmony: HARMONY_USE_EPOLL needs Linux"
#endif
#if defined(HARMONY_USE_IOCP) != defined(_WIN32)
#error "harmony: IOCP is the Windows backend and the only one there"
#endif

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

namespace harmony {
namespace detail {

// >>util  logging, number parsing
struct logger {
  log_function fn;
  // server::reconfigure changes it while the loops log.
  std::atomic<log_level> level{log_level::off};
  bool enabled(log_level l) const noexcept { return fn && log_enabled(level.load(std::memory_order_relaxed), l); }
#if defined(__MINGW32__)
  // MinGW's libstdc++ routes vsnprintf to the C99-conforming printf (%zu, %lld).
  __attribute__((format(gnu_printf, 3, 4)))
#elif defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  void
  operator()(log_level l, const char* format, ...) const {
    if (!enabled(l)) return;
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    fn(l, text);
  }
};

// Lets a message that may repeat at a high rate (a flood of refused connections) through
// at most once per interval, and counts those it held back. Thread-safe.
class log_gate {
 public:
  explicit log_gate(std::int64_t interval_ms = 10000) noexcept : interval_(interval_ms) {}
  // True when a message may go out at `now` (ms); `held` is then how many were held back
  // since the last one that went out.
  bool pass(std::int64_t now, std::uint64_t& held) noexcept {
    std::int64_t next = next_.load(std::memory_order_relaxed);
    if (now < next || !next_.compare_exchange_strong(next, now + interval_, std::memory_order_relaxed)) {
      held_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    held = held_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  std::int64_t interval_;
  std::atomic<std::int64_t> next_{std::numeric_limits<std::int64_t>::min()};
  std::atomic<std::uint64_t> held_{0};
};

inline bool parse_uint(std::string_view text, std::uint64_t limit, std::uint64_t& out) noexcept {
  if (text.empty() || text.size() > 20) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (limit - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {

// >>errors-impl  the error category, the parsers of the public types, the option checks
namespace detail {
class harmony_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "harmony"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::ok: return "success";
#define HARMONY_MESSAGE_ITEM(name, text) \
  case errc::name: return text;
      HARMONY_ERRORS(HARMONY_MESSAGE_ITEM)
#undef HARMONY_MESSAGE_ITEM
    }
    return "unknown harmony error";
  }
};

// The enumerator among `values` whose to_string() is `text`.
template <class E>
std::error_code parse_by_name(std::string_view text, std::initializer_list<E> values, E& out) {
  for (E v : values)
    if (text == to_string(v)) {
      out = v;
      return {};
    }
  return make_error_code(errc::bad_option);
}
}  // namespace detail

HARMONY_DEF const std::error_category& error_category() noexcept {
  static const detail::harmony_category category;
  return category;
}

HARMONY_DEF std::string endpoint::to_string() const {
  std::string text = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return text + ":" + std::to_string(port);
}

HARMONY_DEF std::error_code parse_endpoint(std::string_view text, endpoint& out) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return make_error_code(errc::bad_address);
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return make_error_code(errc::bad_address);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return make_error_code(errc::bad_address);  // IPv6 needs []
  }
  std::uint64_t number = 0;
  if (host.empty() || !detail::parse_uint(port, 65535, number)) return make_error_code(errc::bad_address);
  for (char c : host)
    if (static_cast<unsigned char>(c) <= ' ' || c == '/' || c == '[' || c == ']') return make_error_code(errc::bad_address);
  out.host.assign(host.data(), host.size());
  out.port = static_cast<std::uint16_t>(number);
  return {};
}

HARMONY_DEF std::error_code parse_duration(std::string_view text, duration& out) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "ms") scale = 1;
  else if (unit == "s") scale = 1000;
  else if (unit == "m") scale = 60000;
  else if (unit == "h") scale = 3600000;
  std::uint64_t number = 0;
  // A limit of about 100 years keeps every later addition far from overflow.
  const std::uint64_t limit = 3153600000000ULL;
  if (scale == 0 || !detail::parse_uint(text.substr(0, digits), limit / scale, number))
    return make_error_code(errc::bad_duration);
  out = duration(static_cast<duration::rep>(number * scale));
  return {};
}

HARMONY_DEF std::error_code parse_duration_with_unit(std::string_view text, duration& out) {
  bool bare = !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
  if (bare && text.find_first_not_of('0') != std::string_view::npos) return make_error_code(errc::bad_duration);
  return parse_duration(text, out);
}

HARMONY_DEF std::size_t derived_max_connections(std::uint64_t descriptor_limit,
                                                std::size_t max_admin_connections) noexcept {
  if (descriptor_limit == 0) return 10000;
  std::uint64_t reserve = 64 + static_cast<std::uint64_t>(max_admin_connections);
  std::uint64_t n = descriptor_limit > reserve + 2 ? (descriptor_limit - reserve) / 2 : 1;
  return static_cast<std::size_t>(std::min<std::uint64_t>(n, max_max_connections));
}

HARMONY_DEF std::string format_duration(duration d) {
  long long ms = static_cast<long long>(d.count());
  if (ms == 0) return "0s";
  for (auto unit : {std::make_pair(3600000LL, "h"), std::make_pair(60000LL, "m"), std::make_pair(1000LL, "s")})
    if (ms % unit.first == 0) return std::to_string(ms / unit.first) + unit.second;
  return std::to_string(ms) + "ms";
}

HARMONY_DEF std::error_code parse_integer(std::string_view text, long long low, long long high,
                                          long long& out) noexcept {
  bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  // The magnitude of the most negative long long is one more than the largest.
  const std::uint64_t largest = static_cast<std::uint64_t>(std::numeric_limits<long long>::max());
  std::uint64_t magnitude = 0;
  if (!detail::parse_uint(text, negative ? largest + 1 : largest, magnitude)) return make_error_code(errc::bad_option);
  long long value = negative ? static_cast<long long>(0 - magnitude) : static_cast<long long>(magnitude);
  if (value < low || value > high) return make_error_code(errc::bad_option);
  out = value;
  return {};
}

HARMONY_DEF std::error_code parse_weight(std::string_view text, int& out) {
  long long number = 0;
  if (auto e = parse_integer(text, min_weight, max_weight, number)) return e;
  out = static_cast<int>(number);
  return {};
}

HARMONY_DEF std::error_code parse_algorithm(std::string_view text, algorithm& out) {
  if (text == "leastconn") out = algorithm::leastconn;
  else if (text == "roundrobin") out = algorithm::roundrobin;
  else if (text == "random") out = algorithm::random;
  else if (text == "hash") out = algorithm::hash;
  else return make_error_code(errc::bad_option);
  return {};
}

HARMONY_DEF const char* to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::leastconn: return "leastconn";
    case algorithm::roundrobin: return "roundrobin";
    case algorithm::random: return "random";
    case algorithm::hash: return "hash";
  }
  return "?";
}

HARMONY_DEF const char* to_string(proxy_protocol p) noexcept {
  switch (p) {
    case proxy_protocol::none: return "none";
    case proxy_protocol::v1: return "v1";
    case proxy_protocol::v2: return "v2";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_proxy_protocol(std::string_view text, proxy_protocol& out) {
  return detail::parse_by_name(text, {proxy_protocol::none, proxy_protocol::v1, proxy_protocol::v2}, out);
}

HARMONY_DEF const char* to_string(log_level l) noexcept {
  switch (l) {
    case log_level::trace: return "trace";
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
    case log_level::off: return "off";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_log_level(std::string_view text, log_level& out) {
  return detail::parse_by_name(
      text, {log_level::trace, log_level::debug, log_level::info, log_level::warn, log_level::error, log_level::off}, out);
}

HARMONY_DEF bool log_enabled(log_level threshold, log_level level) noexcept {
  return threshold != log_level::off && level >= threshold;
}

namespace detail {
inline bool is_cidr(std::string_view text) noexcept;  // >>net-address

// Collects the first problem check() finds; later ones are ignored.
struct option_checker {
  option_problem* problem;
  std::error_code error;

  bool fail(errc code, const char* option, std::string reason) {
    if (error) return false;
    error = make_error_code(code);
    if (problem) *problem = option_problem{option, std::move(reason)};
    return false;
  }
  void address(const char* option, const std::string& text) {
    endpoint at;
    if (parse_endpoint(text, at)) fail(errc::bad_address, option, "'" + text + "' is not HOST:PORT (IPv6 as [::1]:PORT)");
  }
  template <class T, class Bound>
  void range(const char* option, T value, Bound low, Bound high) {
    if (value < static_cast<T>(low) || value > static_cast<T>(high))
      fail(errc::bad_option, option, "must be from " + std::to_string(low) + " to " + std::to_string(high));
  }
  void durations(const char* option, duration d, duration low, duration high) {
    if (d < low || d > high)
      fail(errc::bad_option, option, "must be from " + format_duration(low) + " to " + format_duration(high));
  }
  void positive(const char* option, duration d) {
    if (d.count() <= 0) fail(errc::bad_option, option, "must be positive (e.g. 5s)");
  }
  std::error_code done() {
    if (!error && problem) *problem = option_problem{};
    return error;
  }
};
}  // namespace detail

namespace detail {
inline constexpr std::uint16_t dns_port = 53;

// A name server as an option gives it: ADDRESS (port 53), ADDRESS:PORT or [IPv6]:PORT.
inline std::error_code parse_nameserver(std::string_view text, endpoint& out) {
  if (text.empty()) return make_error_code(errc::bad_address);
  if (text.front() != '[' && text.find(':') != text.rfind(':')) {  // a bare IPv6 address
    out = endpoint{std::string(text), dns_port};
    return {};
  }
  if (text.find(':') == std::string_view::npos) {
    out = endpoint{std::string(text), dns_port};
    return {};
  }
  if (auto e = parse_endpoint(text, out)) return e;
  return out.port == 0 ? make_error_code(errc::bad_address) : std::error_code{};
}

}  // namespace detail

HARMONY_DEF std::error_code check(const server_options& o, option_problem* problem) {
  detail::option_checker c{problem, {}};
  c.address("listen", o.listen);
  if (!o.admin.empty()) c.address("admin", o.admin);
  if (!o.stats.empty()) c.address("stats", o.stats);
  c.range("workers", o.workers, min_workers, max_workers);
  c.range("concurrency", o.concurrency, min_concurrency, max_concurrency);
  c.range("requeue", o.requeue, 0, max_requeue);
  if (o.slow_start.count() < 0 || o.slow_start > max_slow_start)
    c.fail(errc::bad_option, "slow_start", "must be from 0s to " + format_duration(max_slow_start));
  c.range("queue_limit", o.queue_limit, std::size_t{0}, max_queue_limit);
  // 0 would make every backend expire, every connect fail at once, every admin
  // connection close at once; idle_timeout 0 means no idle timeout, queue_timeout 0
  // that a connection which finds no slot is refused at once.
  c.positive("host_timeout", o.host_timeout);
  c.positive("connect_timeout", o.connect_timeout);
  if (o.idle_timeout.count() < 0) c.fail(errc::bad_option, "idle_timeout", "must not be negative (0: no idle timeout)");
  if (o.queue_timeout.count() < 0) c.fail(errc::bad_option, "queue_timeout", "must not be negative");
  c.positive("admin_timeout", o.admin_timeout);
  c.range("max_backends", o.max_backends, std::size_t{1}, max_max_backends);
  c.range("max_admin_connections", o.max_admin_connections, std::size_t{1}, max_max_admin_connections);
  c.range("max_admin_line", o.max_admin_line, min_max_admin_line, max_max_admin_line);
  c.range("max_connections", o.max_connections, std::size_t{0}, max_max_connections);
  c.range("max_conns_per_client", o.max_conns_per_client, std::size_t{0}, max_max_connections);
  c.range("buffer_bytes", o.buffer_bytes, std::size_t{1}, max_buffer_bytes);
  c.range("bulk_buffer_bytes", o.bulk_buffer_bytes, std::size_t{0}, max_buffer_bytes);
  // What follows a v1 header in its last read goes into the first relay buffer.
  if (o.accept_proxy && o.buffer_bytes < proxy_v1_max)
    c.fail(errc::bad_option, "buffer_bytes", "must be at least " + std::to_string(proxy_v1_max) + " with accept_proxy");
  if (o.resolve_interval < min_resolve_interval || o.resolve_interval > max_resolve_interval)
    c.fail(errc::bad_option, "resolve_interval",
           "must be from " + format_duration(min_resolve_interval) + " to " + format_duration(max_resolve_interval));
  for (const std::string& text : o.nameservers) {
    endpoint at;
    if (detail::parse_nameserver(text, at) || !detail::is_numeric_host(at.host))
      c.fail(errc::bad_address, "nameservers", "'" + text + "' is not ADDRESS, ADDRESS:PORT or [IPv6]:PORT");
  }
  for (const std::string& block : o.allow_legacy)
    if (!detail::is_cidr(block))
      c.fail(errc::bad_option, "allow_legacy", "'" + block + "' is not an address or CIDR block (10.0.0.0/8, fd00::/8)");
  c.range("max_fails", o.max_fails, 0, max_max_fails);
  c.durations("fail_timeout", o.fail_timeout, min_fail_timeout, max_fail_timeout);
  if (o.check_interval.count() != 0) c.durations("check_interval", o.check_interval, min_check_interval, max_check_interval);
  c.range("check_rise", o.check_rise, 1, max_check_rise_fall);
  c.range("check_fall", o.check_fall, 1, max_check_rise_fall);
  c.range("check_send", o.check_send.size(), std::size_t{0}, max_check_text);
  c.range("check_expect", o.check_expect.size(), std::size_t{0}, max_check_text);
  if (o.drain_timeout.count() < 0 || o.drain_timeout > max_drain_timeout)
    c.fail(errc::bad_option, "drain_timeout", "must be from 0s (stop at once) to " + format_duration(max_drain_timeout));
#if defined(_WIN32)
  if (!o.inherited.listen.empty() || o.inherited.admin >= 0 || o.inherited.stats >= 0)
    c.fail(errc::bad_option, "inherited", "inherited sockets need POSIX (on Windows an upgrade is a restart)");
#else
  for (std::int64_t s : o.inherited.listen)
    if (s < 0 || s > std::numeric_limits<int>::max()) c.fail(errc::bad_option, "inherited", "a listen socket is not a descriptor");
#endif
  return c.done();
}

HARMONY_DEF std::error_code check(const client_options& o, option_problem* problem) {
  detail::option_checker c{problem, {}};
  if (o.balancers.empty()) c.address("balancer", o.balancer);
  if (o.balancers.size() > max_balancers)
    c.fail(errc::bad_option, "balancers", "at most " + std::to_string(max_balancers) + " balancers");
  for (std::size_t i = 0; i < o.balancers.size(); ++i) {
    c.address("balancers", o.balancers[i]);
    for (std::size_t j = 0; j < i; ++j)
      if (o.balancers[j] == o.balancers[i]) c.fail(errc::bad_option, "balancers", "'" + o.balancers[i] + "' is listed twice");
  }
  c.range("port", o.port, 1, 65535);
  c.range("weight", o.weight, min_weight, max_weight);
  c.range("maxconn", o.maxconn, 0, max_maxconn);
  // The host travels in a space-separated register line.
  for (char ch : o.host)
    if (static_cast<unsigned char>(ch) <= ' ') {
      c.fail(errc::bad_option, "host", "'" + o.host + "' is not a host name or address");
      break;
    }
  c.positive("ack", o.ack);
  c.positive("reconnect_min", o.reconnect_min);
  if (o.reconnect_max < o.reconnect_min) c.fail(errc::bad_option, "reconnect_max", "must not be less than reconnect_min");
  return c.done();
}

HARMONY_DEF const char* to_string(readiness r) noexcept {
  switch (r) {
    case readiness::ready: return "ready";
    case readiness::drain: return "drain";
    case readiness::down: return "down";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_readiness(std::string_view text, readiness& out) {
  return detail::parse_by_name(text, {readiness::ready, readiness::drain, readiness::down}, out);
}

}  // namespace harmony

namespace harmony {
namespace detail {

// >>net-address  sans-IO resolved address: family, 16 address bytes, port
// Where a backend is reached, as plain bytes: what the registry stores and
// hands to a connection. Only the platform layer (>>os-address) turns it into
// an OS socket address, so policy code names no OS type.
enum class ip_family : std::uint8_t { none, v4, v6 };

struct resolved_address {
  ip_family family = ip_family::none;
  std::uint8_t bytes[16] = {};  // network order; IPv4 uses the first 4
  std::uint16_t port = 0;       // host order
  std::uint32_t scope = 0;      // IPv6 scope (interface) id, 0 otherwise

  static resolved_address v4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d, std::uint16_t port) {
    resolved_address r;
    r.family = ip_family::v4;
    r.bytes[0] = a;
    r.bytes[1] = b;
    r.bytes[2] = c;
    r.bytes[3] = d;
    r.port = port;
    return r;
  }
  bool valid() const noexcept { return family != ip_family::none; }
  std::size_t host_size() const noexcept { return family == ip_family::v4 ? 4 : family == ip_family::v6 ? 16 : 0; }
  // The same host at another port.
  resolved_address with_port(std::uint16_t p) const noexcept {
    resolved_address r = *this;
    r.port = p;
    return r;
  }
  // The host part only, as bytes: the persistence key of a client.
  std::string host_key() const { return std::string(reinterpret_cast<const char*>(bytes), host_size()); }
  bool operator==(const resolved_address& o) const noexcept {
    return family == o.family && port == o.port && scope == o.scope &&
           std::memcmp(bytes, o.bytes, host_size()) == 0;
  }
  bool operator!=(const resolved_address& o) const noexcept { return !(*this == o); }
};

// A numeric IPv4 (dotted quad) or IPv6 (RFC 4291 text: "::" once, an IPv4 tail
// allowed) host, no port, no scope: true when `text` is one.
inline bool parse_ip(std::string_view text, resolved_address& out) noexcept {
  auto v4 = [](std::string_view t, std::uint8_t* to) {
    int parts = 0;
    while (parts < 4) {
      std::size_t n = 0;
      unsigned value = 0;
      while (n < t.size() && n < 4 && t[n] >= '0' && t[n] <= '9') value = value * 10 + static_cast<unsigned>(t[n++] - '0');
      if (n == 0 || n > 3 || value > 255 || (n > 1 && t[0] == '0')) return false;
      to[parts++] = static_cast<std::uint8_t>(value);
      t.remove_prefix(n);
      if (parts < 4) {
        if (t.empty() || t[0] != '.') return false;
        t.remove_prefix(1);
      }
    }
    return t.empty();
  };
  resolved_address r;
  if (text.find(':') == std::string_view::npos) {
    if (!v4(text, r.bytes)) return false;
    r.family = ip_family::v4;
    out = r;
    return true;
  }
  // IPv6: groups before "::" fill from the front, those after it from the back.
  std::uint8_t head[16] = {}, tail[16] = {};
  std::size_t head_n = 0, tail_n = 0;
  bool gap = false;
  std::string_view t = text;
  if (t.substr(0, 2) == "::") {
    gap = true;
    t.remove_prefix(2);
  } else if (!t.empty() && t[0] == ':') {
    return false;
  }
  while (!t.empty()) {
    std::uint8_t* to = gap ? tail : head;
    std::size_t& n = gap ? tail_n : head_n;
    std::size_t end = t.find(':');
    std::string_view group = t.substr(0, end);
    if (group.find('.') != std::string_view::npos) {  // an IPv4 tail ends the address
      if (end != std::string_view::npos || n + 4 > 16 || !v4(group, to + n)) return false;
      n += 4;
      break;
    }
    if (group.empty() || group.size() > 4 || n + 2 > 16) return false;
    unsigned value = 0;
    for (char c : group) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      value = value * 16 + static_cast<unsigned>(d);
    }
    to[n++] = static_cast<std::uint8_t>(value >> 8);
    to[n++] = static_cast<std::uint8_t>(value & 0xff);
    if (end == std::string_view::npos) break;
    t.remove_prefix(end + 1);
    if (!t.empty() && t[0] == ':') {
      if (gap) return false;  // "::" twice
      gap = true;
      t.remove_prefix(1);
    } else if (t.empty()) {
      return false;  // a trailing single ':'
    }
  }
  if (gap ? head_n + tail_n > 14 : head_n != 16) return false;
  std::memcpy(r.bytes, head, head_n);
  std::memcpy(r.bytes + 16 - tail_n, tail, tail_n);
  r.family = ip_family::v6;
  out = r;
  return true;
}

// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket reports for
// an IPv4 peer) as the IPv4 address it stands for; any other address as it is.
inline resolved_address unmapped(const resolved_address& a) noexcept {
  static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a.family != ip_family::v6 || std::memcmp(a.bytes, mapped, 12) != 0) return a;
  return resolved_address::v4(a.bytes[12], a.bytes[13], a.bytes[14], a.bytes[15], a.port);
}

// An address block, "10.0.0.0/8" or "fd00::/8"; a bare address is one host (/32, /128).
struct cidr {
  resolved_address base;  // with the host bits cleared
  int prefix = 0;

  // Whether `a` (its host; the port is ignored) is in the block. An IPv4 block also
  // holds the IPv4-mapped IPv6 form (::ffff:a.b.c.d) that a dual-stack socket reports.
  bool contains(const resolved_address& a) const noexcept {
    resolved_address plain = base.family == ip_family::v4 ? unmapped(a) : a;
    const std::uint8_t* bytes = plain.bytes;
    if (plain.family != base.family) return false;
    for (int bit = 0; bit < prefix; bit += 8) {
      int keep = prefix - bit >= 8 ? 8 : prefix - bit;
      std::uint8_t mask = static_cast<std::uint8_t>(0xff << (8 - keep));
      if ((bytes[bit / 8] & mask) != base.bytes[bit / 8]) return false;
    }
    return true;
  }
};

// Parses ADDRESS[/PREFIX]; false when it is not one (a host name, a prefix beyond
// the family's bits). Host bits set under the prefix are cleared.
inline bool parse_cidr(std::string_view text, cidr& out) noexcept {
  std::size_t slash = text.find('/');
  cidr c;
  if (!parse_ip(text.substr(0, slash), c.base)) return false;
  int bits = c.base.family == ip_family::v4 ? 32 : 128;
  c.prefix = bits;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return false;
    int value = 0;
    for (char ch : p) {
      if (ch < '0' || ch > '9') return false;
      value = value * 10 + (ch - '0');
    }
    if (value > bits) return false;
    c.prefix = value;
  }
  for (int i = 0; i < bits / 8; ++i) {
    int keep = c.prefix - 8 * i;
    keep = keep < 0 ? 0 : keep > 8 ? 8 : keep;
    c.base.bytes[i] = static_cast<std::uint8_t>(c.base.bytes[i] & (0xff << (8 - keep)));
  }
  out = c;
  return true;
}

inline bool is_cidr(std::string_view text) noexcept {
  cidr c;
  return parse_cidr(text, c);
}

// Whether `a` is in any of `blocks` (CIDR texts; one that does not parse holds nothing).
inline bool in_any_cidr(const std::vector<std::string>& blocks, const resolved_address& a) noexcept {
  for (const std::string& text : blocks) {
    cidr c;
    if (parse_cidr(text, c) && c.contains(a)) return true;
  }
  return false;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>os-address  the portable resolved address to and from the OS socket address
// The only place that converts between resolved_address (>>net-address) and the
// sockaddr the OS takes: the platform layer calls these at its edge.
inline resolved_address to_resolved(const address& a) noexcept {
  resolved_address r;
  if (a.family() == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&a.storage);
    r.family = ip_family::v4;
    std::memcpy(r.bytes, &in->sin_addr, 4);
    r.port = ntohs(in->sin_port);
  } else if (a.family() == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
    r.family = ip_family::v6;
    std::memcpy(r.bytes, &in6->sin6_addr, 16);
    r.port = ntohs(in6->sin6_port);
    r.scope = in6->sin6_scope_id;
  }
  return r;
}

inline address to_os_address(const resolved_address& r) noexcept {
  address a;
  if (r.family == ip_family::v4) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
    in->sin_family = AF_INET;
    std::memcpy(&in->sin_addr, r.bytes, 4);
    in->sin_port = htons(r.port);
    a.length = static_cast<socklen_t>(sizeof(sockaddr_in));
  } else if (r.family == ip_family::v6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    in6->sin6_family = AF_INET6;
    std::memcpy(&in6->sin6_addr, r.bytes, 16);
    in6->sin6_port = htons(r.port);
    in6->sin6_scope_id = r.scope;
    a.length = static_cast<socklen_t>(sizeof(sockaddr_in6));
  }
  return a;
}

// Resolves a host and port into the portable form.
inline std::error_code resolve(const endpoint& ep, resolved_address& out) {
  address a;
  if (auto e = resolve(ep, a, false)) return e;
  out = to_resolved(a);
  return out.valid() ? std::error_code{} : make_error_code(errc::resolve_failed);
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>selector  sans-IO backend selection (weighted least-connections, round-robin)
// Sans-IO choice of a backend among eligible slots, O(log n) per operation.
// Every slot carries a virtual "pass" that advances by 1/weight each time it is
// picked (stride scheduling): picking the smallest pass spreads picks smoothly in
// proportion to weight, as smooth weighted round-robin does, but from a heap.
// A pass is kept exactly, as ticks/weight, so equal passes tie exactly.
//
// roundrobin takes the smallest pass. leastconn takes it too, unless that backend
// holds at least one whole connection more than its weighted fair share of the
// open connections plus the one being placed, i.e. active - 1 >= (A + 1) * w / W
// (A open in all, W the total weight): then it takes the backend with the fewest
// open connections per unit of weight, which is never over its share. So a
// connection still tearing down never costs a backend its turn (weights hold for
// short sequential traffic), while a slow backend that piles up connections is
// passed over. Two indexed heaps, one by pass and one by load, keep it O(log n).
//
// Short-term fairness: a backend passed over (for load or by the judge) lags the
// virtual time "now" (the largest pass taken so far); when it is next taken its pass
// is first raised to within one stride of now, so it gets one pick, not a run of
// catch-up picks, and nobody else is starved meanwhile. A newcomer starts at now.
class selector {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;
  enum class verdict { take, skip, evict };

  explicit selector(algorithm a = algorithm::leastconn) : algorithm_(a) {}

  void set_algorithm(algorithm a) {
    algorithm_ = a;
    // The load heap is kept only for leastconn.
    heaps_[by_load].clear();
    if (uses_load())
      for (std::uint32_t slot : heaps_[by_pass]) push(by_load, slot);
  }
  algorithm get_algorithm() const noexcept { return algorithm_; }
  std::size_t size() const noexcept { return heaps_[by_pass].size(); }
  bool contains(std::uint32_t slot) const noexcept {
    return slot < items_.size() && items_[slot].pos[by_pass] != npos;
  }

  // Makes a slot eligible. A newcomer starts at the current virtual time, so it
  // neither floods with catch-up picks nor waits behind everyone.
  void insert(std::uint32_t slot, int weight, int active) {
    if (contains(slot)) {
      set_weight(slot, weight);
      set_active(slot, active);
      return;
    }
    if (slot >= items_.size()) items_.resize(slot + 1);
    item& it = items_[slot];
    set_weight_only(it, weight);
    it.active = std::max(active, 0);
    it.ticks = std::max(it.ticks, ticks_at_now(it.weight));
    total_weight_ += it.weight;
    total_active_ += static_cast<std::uint64_t>(it.active);
    link(slot);
  }
  void erase(std::uint32_t slot) {
    if (!contains(slot)) return;
    unlink(slot);
    total_weight_ -= items_[slot].weight;
    total_active_ -= static_cast<std::uint64_t>(items_[slot].active);
  }
  // Forgets a slot entirely (it may be reused by another backend).
  void reset(std::uint32_t slot) {
    erase(slot);
    if (slot < items_.size()) items_[slot] = item{};
  }
  void set_weight(std::uint32_t slot, int weight) {
    if (slot >= items_.size()) return;
    item& it = items_[slot];
    bool in = contains(slot);
    if (in) total_weight_ -= it.weight;
    set_weight_only(it, weight);
    if (!in) return;
    total_weight_ += it.weight;
    fix_all(slot);
  }
  void set_active(std::uint32_t slot, int active) {
    if (slot >= items_.size()) return;
    item& it = items_[slot];
    active = std::max(active, 0);
    if (!contains(slot)) {
      it.active = active;
      return;
    }
    total_active_ = total_active_ - static_cast<std::uint64_t>(it.active) + static_cast<std::uint64_t>(active);
    it.active = active;
    if (uses_load()) fix(by_load, it.pos[by_load]);
  }

  // Returns the best slot that `judge` takes, or npos. Slots judged `skip` stay
  // eligible; `evict` removes them. The chosen slot is charged one pick. `judge`
  // may be asked twice about a slot in one pick and must answer the same.
  template <class Judge>
  std::uint32_t pick(Judge&& judge) {
    std::uint32_t aside_small[8];
    std::vector<std::uint32_t> aside_big;
    std::size_t aside = 0;
    auto first_taken = [&](int h) {
      while (!heaps_[h].empty()) {
        std::uint32_t top = heaps_[h].front();
        verdict v = judge(top);
        if (v == verdict::take) return top;
        if (v == verdict::evict) {
          erase(top);
          continue;
        }
        unlink(top);  // aside for this pick only; it still counts in the totals
        if (aside < 8) aside_small[aside++] = top;
        else aside_big.push_back(top);
      }
      return npos;
    };
    std::uint32_t chosen = first_taken(by_pass);
    // The least loaded slot is never over its share, and the chosen one is in
    // the load heap too, so this finds a slot.
    if (chosen != npos && uses_load() && over_share(items_[chosen])) chosen = first_taken(by_load);
    for (std::size_t i = 0; i < aside; ++i) link(aside_small[i]);
    for (std::uint32_t s : aside_big) link(s);
    if (chosen != npos) charge(chosen);
    return chosen;
  }

  // The pass of a slot relative to now, in strides of that slot (pass - now) * weight,
  // rounded down: -1 or more for every slot by the time it is taken. For tests.
  std::int64_t lead(std::uint32_t slot) const noexcept {
    if (slot >= items_.size()) return 0;
    const item& it = items_[slot];
    return static_cast<std::int64_t>(it.ticks) - static_cast<std::int64_t>(ticks_at_now(it.weight));
  }

 private:
  enum : int { by_pass = 0, by_load = 1 };
  struct item {
    std::uint64_t weight = 1;
    std::uint64_t ticks = 0;  // pass = ticks / weight
    int active = 0;
    std::uint32_t pos[2] = {npos, npos};  // in heaps_[by_pass], heaps_[by_load]
  };

  bool uses_load() const noexcept { return algorithm_ == algorithm::leastconn; }

  // The registry admits only weights in [min_weight, max_weight] (>>types); the
  // clamp merely keeps every product below within 63 bits should one slip through.
  static void set_weight_only(item& it, int weight) {
    std::uint64_t w = static_cast<std::uint64_t>(std::min(std::max(weight, min_weight), max_weight));
    if (w == it.weight) return;
    it.ticks = it.ticks * w / it.weight;  // keep the pass where it was
    it.weight = w;
  }
  // The smallest ticks at weight w whose pass is not before now.
  std::uint64_t ticks_at_now(std::uint64_t w) const noexcept {
    return (now_ticks_ * w + now_weight_ - 1) / now_weight_;
  }
  // At least one whole connection over its weighted share of the open connections
  // plus the one being placed: active - 1 >= (A + 1) * w / W. Counts are capped at
  // 2^24 (far above any descriptor limit) to keep the products within 64 bits.
  bool over_share(const item& it) const noexcept {
    constexpr std::uint64_t cap = std::uint64_t{1} << 24;
    std::uint64_t mine = std::min<std::uint64_t>(static_cast<std::uint64_t>(it.active), cap);
    if (mine == 0) return false;
    std::uint64_t all = std::min(total_active_, cap);
    return (mine - 1) * total_weight_ >= (all + 1) * it.weight;
  }
  void charge(std::uint32_t slot) {
    item& it = items_[slot];
    // A slot that fell behind (passed over for load, or by the judge) comes back
    // within one stride of now instead of taking a run of catch-up picks.
    std::uint64_t at_now = ticks_at_now(it.weight);
    if (it.ticks + 1 < at_now) it.ticks = at_now - 1;
    if (it.ticks * now_weight_ > now_ticks_ * it.weight) {
      now_ticks_ = it.ticks;
      now_weight_ = it.weight;
    }
    ++it.ticks;
    fix_all(slot);
  }

  void link(std::uint32_t slot) {
    push(by_pass, slot);
    if (uses_load()) push(by_load, slot);
  }
  void unlink(std::uint32_t slot) {
    remove(by_pass, slot);
    if (uses_load()) remove(by_load, slot);
  }
  void fix_all(std::uint32_t slot) {
    fix(by_pass, items_[slot].pos[by_pass]);
    if (uses_load()) fix(by_load, items_[slot].pos[by_load]);
  }

  // Whether slot a goes before slot b in heap h.
  bool before(int h, std::uint32_t a, std::uint32_t b) const noexcept {
    const item& x = items_[a];
    const item& y = items_[b];
    if (h == by_load) {
      std::uint64_t lx = static_cast<std::uint64_t>(x.active) * y.weight;
      std::uint64_t ly = static_cast<std::uint64_t>(y.active) * x.weight;
      if (lx != ly) return lx < ly;
    }
    std::uint64_t px = x.ticks * y.weight, py = y.ticks * x.weight;
    if (px != py) return px < py;
    // Equal passes: the heavier goes first, as in smooth weighted round-robin.
    if (x.weight != y.weight) return x.weight > y.weight;
    return a < b;
  }
  void push(int h, std::uint32_t slot) {
    items_[slot].pos[h] = static_cast<std::uint32_t>(heaps_[h].size());
    heaps_[h].push_back(slot);
    sift_up(h, items_[slot].pos[h]);
  }
  void remove(int h, std::uint32_t slot) {
    std::vector<std::uint32_t>& heap = heaps_[h];
    std::uint32_t pos = items_[slot].pos[h];
    items_[slot].pos[h] = npos;
    std::uint32_t last = heap.back();
    heap.pop_back();
    if (pos < heap.size()) {
      place(h, pos, last);
      fix(h, pos);
    }
  }
  void fix(int h, std::uint32_t pos) {
    std::uint32_t slot = heaps_[h][pos];
    sift_up(h, pos);
    sift_down(h, items_[slot].pos[h]);
  }
  void place(int h, std::size_t pos, std::uint32_t slot) {
    heaps_[h][pos] = slot;
    items_[slot].pos[h] = static_cast<std::uint32_t>(pos);
  }
  void sift_up(int h, std::size_t pos) {
    std::uint32_t slot = heaps_[h][pos];
    while (pos > 0) {
      std::size_t parent = (pos - 1) / 2;
      if (!before(h, slot, heaps_[h][parent])) break;
      place(h, pos, heaps_[h][parent]);
      pos = parent;
    }
    place(h, pos, slot);
  }
  void sift_down(int h, std::size_t pos) {
    const std::vector<std::uint32_t>& heap = heaps_[h];
    std::uint32_t slot = heap[pos];
    for (;;) {
      std::size_t child = 2 * pos + 1;
      if (child >= heap.size()) break;
      if (child + 1 < heap.size() && before(h, heap[child + 1], heap[child])) ++child;
      if (!before(h, heap[child], slot)) break;
      place(h, pos, heap[child]);
      pos = child;
    }
    place(h, pos, slot);
  }

  algorithm algorithm_;
  std::vector<item> items_;
  std::vector<std::uint32_t> heaps_[2];
  std::uint64_t total_weight_ = 0;  // of the slots in the heaps
  std::uint64_t total_active_ = 0;
  std::uint64_t now_ticks_ = 0;  // the virtual time: the largest pass taken so far
  std::uint64_t now_weight_ = 1;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>sampler  sans-IO weighted random choice: a small PRNG, a Fenwick tree, power of two choices
// `random` draws backends with probability proportional to their weight. The
// weights live in a Fenwick (binary indexed) tree over the registry's slots, so
// that setting one weight and drawing one slot are both O(log n). The random
// source is injected: the registry owns one fast_random, seeded once from the
// OS CSPRNG when the server is made (tests seed it with a constant).

// splitmix64 (Steele, Lea, Flood 2014): 64 bits of state, one multiply-xorshift
// chain per number; statistically sound for drawing backends, not for secrets.
class fast_random {
 public:
  explicit fast_random(std::uint64_t seed = 0x9E3779B97F4A7C15ULL) noexcept : state_(seed) {}
  void seed(std::uint64_t s) noexcept { state_ = s; }
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, without modulo bias (rejects the uneven tail).
  std::uint64_t below(std::uint64_t n) noexcept {
    std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    for (;;) {
      std::uint64_t x = next();
      if (x < limit) return x % n;
    }
  }

 private:
  std::uint64_t state_;
};

// A weight per slot (0: not drawn) and draws in proportion to them.
class weighted_sampler {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;

  std::uint64_t total() const noexcept { return total_; }
  std::uint64_t weight(std::uint32_t slot) const noexcept { return slot < weights_.size() ? weights_[slot] : 0; }

  // Sets a slot's weight; 0 takes it out of the draw.
  void set(std::uint32_t slot, std::uint64_t weight) {
    if (slot >= weights_.size()) {
      if (weight == 0) return;
      grow(slot + 1);
    }
    std::uint64_t old = weights_[slot];
    if (old == weight) return;
    weights_[slot] = weight;
    total_ += weight;
    total_ -= old;
    // Two's complement: adding (weight - old) mod 2^64 is the signed change.
    std::uint64_t delta = weight - old;
    for (std::size_t i = slot + 1; i <= capacity_; i += i & (~i + 1)) tree_[i] += delta;
  }

  // The slot whose share of [0, total) holds `point` (point < total), O(log n).
  std::uint32_t find(std::uint64_t point) const noexcept {
    if (point >= total_) return npos;
    std::size_t pos = 0;
    for (std::size_t step = capacity_; step > 0; step >>= 1) {
      std::size_t next = pos + step;
      if (next <= capacity_ && tree_[next] <= point) {
        pos = next;
        point -= tree_[next];
      }
    }
    return static_cast<std::uint32_t>(pos);  // tree index pos + 1 is slot pos
  }

  // One slot drawn with probability weight/total, or npos when every weight is 0.
  std::uint32_t draw(fast_random& random) const noexcept {
    return total_ == 0 ? npos : find(random.below(total_));
  }

 private:
  // Capacity is a power of two, so that find() can descend by halving steps.
  void grow(std::size_t at_least) {
    std::size_t cap = capacity_ ? capacity_ : 8;
    while (cap < at_least) cap *= 2;
    weights_.resize(cap, 0);
    capacity_ = cap;
    tree_.assign(cap + 1, 0);
    for (std::size_t i = 1; i <= cap; ++i) {
      tree_[i] += weights_[i - 1];
      std::size_t parent = i + (i & (~i + 1));
      if (parent <= cap) tree_[parent] += tree_[i];
    }
  }

  std::vector<std::uint64_t> weights_;
  std::vector<std::uint64_t> tree_;  // 1-based Fenwick tree over weights_
  std::size_t capacity_ = 0;
  std::uint64_t total_ = 0;
};

// Weighted power of two choices (Mitzenmacher): draws two distinct slots by
// weight that `judge` takes and returns the one `less_loaded` prefers (the
// first on a tie), the only one when just one is left, or npos. Slots judged
// `skip` are set aside for this pick; `evict` takes them out of the sampler for
// good (the caller re-adds them when they come back). O(log n) per draw.
template <class Judge, class LessLoaded>
std::uint32_t pick_two(weighted_sampler& sampler, fast_random& random, Judge&& judge, LessLoaded&& less_loaded) {
  using verdict = selector::verdict;
  struct aside {
    std::uint32_t slot;
    std::uint64_t weight;
  };
  aside small[8];
  std::vector<aside> big;
  std::size_t n = 0;
  auto put_aside = [&](std::uint32_t slot) {
    aside a{slot, sampler.weight(slot)};
    if (n < 8) small[n++] = a;
    else big.push_back(a);
    sampler.set(slot, 0);
  };
  auto one = [&]() -> std::uint32_t {
    for (;;) {
      std::uint32_t s = sampler.draw(random);
      if (s == weighted_sampler::npos) return s;
      verdict v = judge(s);
      if (v == verdict::take) return s;
      if (v == verdict::skip) put_aside(s);
      else sampler.set(s, 0);
    }
  };
  std::uint32_t first = one();
  std::uint32_t second = weighted_sampler::npos;
  if (first != weighted_sampler::npos) {
    put_aside(first);  // the second must be another slot
    second = one();
  }
  for (std::size_t i = 0; i < n; ++i) sampler.set(small[i].slot, small[i].weight);
  for (const aside& a : big) sampler.set(a.slot, a.weight);
  if (second == weighted_sampler::npos) return first;
  return less_loaded(second, first) ? second : first;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>maglev  sans-IO consistent hashing: a Maglev lookup table keyed by backend address
// `hash` maps a client address to a backend through a Maglev lookup table
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016). Every backend has its own permutation of the M
// entries (M prime), derived from its key alone: entry j is
// (offset + j * skip) mod M. Backends take turns, each claiming the next entry
// of its permutation that is still free, until the table is full; a backend of
// twice the weight takes twice the turns (stride order: the smallest
// (turns + 1) / weight goes next). Since the keys are the backends' addresses
// and the turn order is decided by sorted keys, every balancer with the same
// backend set builds the same table, whatever order the backends came in; and
// since each permutation is the backend's own, removing one backend moves its
// entries only, and few others. A pick is a hash and a lookup; the table is
// rebuilt only when the backend set or a weight changes.

// 64-bit FNV-1a: the same on every platform and compiler (std::hash is not).
inline std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t h = 14695981039346656037ULL) noexcept {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// The splitmix64 finaliser: spreads FNV's weak low bits over all 64.
inline std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A backend's key: family, address bytes and port of where it is reached, the
// same bytes on every balancer that resolves the same address.
inline std::string backend_key(const resolved_address& to) {
  std::string key;
  key.reserve(19);
  key.push_back(static_cast<char>(to.family));
  key.append(reinterpret_cast<const char*>(to.bytes), to.host_size());
  key.push_back(static_cast<char>(to.port >> 8));
  key.push_back(static_cast<char>(to.port & 0xff));
  return key;
}

class maglev_table {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;
  // How many lookups a pick may make (seeds 0, 1, …) before it gives up on the table.
  static constexpr unsigned max_attempts = 8;

  struct member {
    std::string key;           // backend_key(), or any bytes naming the backend the same everywhere
    std::uint32_t slot = 0;    // what lookup() returns for it
    std::uint64_t weight = 1;  // at least 1
  };

  // `size` must be prime (hash_table_size by default) for every skip to reach every entry.
  explicit maglev_table(std::uint32_t size = hash_table_size) : size_(size < 2 ? 2 : size) {}

  std::uint32_t size() const noexcept { return size_; }
  bool empty() const noexcept { return members_.empty(); }
  // The members in canonical (key) order, and the table as indices into them.
  const std::vector<member>& members() const noexcept { return members_; }
  const std::vector<std::uint32_t>& entries() const noexcept { return entries_; }

  // Where backend `key`'s permutation starts and how it steps: offset in [0, M), skip in [1, M).
  std::uint32_t offset(std::string_view key) const noexcept {
    return static_cast<std::uint32_t>(mix64(fnv1a64(key) ^ 0x6F6666736574ULL) % size_);
  }
  std::uint32_t skip(std::string_view key) const noexcept {
    return static_cast<std::uint32_t>(mix64(fnv1a64(key) ^ 0x736B6970ULL) % (size_ - 1) + 1);
  }

  // Builds the table for these members; their order does not matter. O(M log n).
  void build(std::vector<member> members) {
    members_ = std::move(members);
    std::sort(members_.begin(), members_.end(), [](const member& a, const member& b) {
      return a.key != b.key ? a.key < b.key : a.slot < b.slot;
    });
    entries_.clear();
    if (members_.empty()) return;
    entries_.assign(size_, npos);
    struct turn {
      std::uint64_t taken = 0;  // entries claimed so far
      std::uint64_t weight = 1;
      std::uint32_t at = 0;     // the next place in its permutation
      std::uint32_t skip = 1;
    };
    std::vector<turn> turns(members_.size());
    for (std::size_t i = 0; i < members_.size(); ++i) {
      turns[i].weight = std::max<std::uint64_t>(1, members_[i].weight);
      turns[i].at = offset(members_[i].key);
      turns[i].skip = skip(members_[i].key);
    }
    // A heap of member indices, the next to take a turn on top: smallest
    // (taken + 1) / weight, compared exactly; ties go to the lower index.
    auto later = [&](std::uint32_t a, std::uint32_t b) {
      std::uint64_t x = (turns[a].taken + 1) * turns[b].weight, y = (turns[b].taken + 1) * turns[a].weight;
      return x != y ? x > y : a > b;
    };
    std::vector<std::uint32_t> heap(members_.size());
    for (std::uint32_t i = 0; i < heap.size(); ++i) heap[i] = i;
    std::make_heap(heap.begin(), heap.end(), later);
    for (std::uint32_t filled = 0; filled < size_; ++filled) {
      std::pop_heap(heap.begin(), heap.end(), later);
      std::uint32_t i = heap.back();
      turn& t = turns[i];
      while (entries_[t.at] != npos) {
        t.at += t.skip;  // both below M, so one subtraction is the modulo
        if (t.at >= size_) t.at -= size_;
      }
      entries_[t.at] = i;
      ++t.taken;
      std::push_heap(heap.begin(), heap.end(), later);
    }
  }

  // The backend (slot) for a client key at `attempt` 0, 1, …: each attempt is an
  // independent lookup, the client's next preference when the first cannot serve.
  std::uint32_t lookup(std::string_view client_key, unsigned attempt = 0) const noexcept {
    if (entries_.empty()) return npos;
    std::uint64_t h = mix64(fnv1a64(client_key) + 0x9E3779B97F4A7C15ULL * attempt);
    return members_[entries_[h % size_]].slot;
  }

 private:
  std::uint32_t size_;
  std::vector<member> members_;
  std::vector<std::uint32_t> entries_;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>codec  sans-IO admin protocol: dialect detection, legacy tokens, native lines
// The admin protocol as pure functions and resumable parsers over caller bytes:
// no sockets, no allocation beyond the partial token or line they keep.

enum class dialect { undecided, legacy, native };

// harmony.js agents speak first with one of these tokens; anything else is native.
inline bool is_legacy_command(std::string_view t) noexcept {
  return t == "NID" || t == "ID" || t == "BAL" || t == "SPORT" || t == "ACK" || t == "CLOSE" || t == "BYE";
}

// Decides the dialect from the first bytes of a connection.
inline dialect detect_dialect(std::string_view first) noexcept {
  if (first.empty()) return dialect::undecided;
  if (first.front() == ':') return dialect::legacy;  // an empty token, which legacy agents skip
  std::size_t upper = 0;
  while (upper < first.size() && first[upper] >= 'A' && first[upper] <= 'Z') ++upper;
  if (upper == first.size()) {
    // Still a prefix of a legacy command? Then wait for more bytes.
    for (std::string_view c : {"NID", "ID", "BAL", "SPORT", "ACK", "CLOSE", "BYE"})
      if (c.substr(0, upper) == first.substr(0, upper)) return dialect::undecided;
    return dialect::native;
  }
  return first[upper] == ':' && is_legacy_command(first.substr(0, upper)) ? dialect::legacy : dialect::native;
}

// The legacy token stream: tokens end with ':'; a message is a command token and
// one argument token, except BYE. Tokens may split anywhere across reads.
class legacy_parser {
 public:
  static constexpr std::size_t max_token = legacy_max_token;

  // Calls on_message(command, argument) per complete message. Returns false on
  // a malformed stream (unknown command, oversized token: too_long()); the
  // connection should close.
  template <class OnMessage>
  bool feed(std::string_view bytes, OnMessage&& on_message) {
    while (!bytes.empty()) {
      std::size_t colon = bytes.find(':');
      std::string_view piece = bytes.substr(0, colon);
      if (token_.size() + piece.size() > max_token) {
        too_long_ = true;
        return false;
      }
      token_.append(piece.data(), piece.size());
      if (colon == std::string_view::npos) return true;
      bytes.remove_prefix(colon + 1);
      if (!token(on_message)) return false;
      token_.clear();
    }
    return true;
  }
  bool too_long() const noexcept { return too_long_; }  // feed() failed on a token over max_token

 private:
  template <class OnMessage>
  bool token(OnMessage& on_message) {
    if (want_argument_) {
      want_argument_ = false;
      on_message(std::string_view(command_), std::string_view(token_));
      return true;
    }
    if (token_.empty()) return true;
    if (token_ == "BYE") {
      on_message(std::string_view(token_), std::string_view());
      return true;
    }
    if (!is_legacy_command(token_)) return false;
    command_ = token_;
    want_argument_ = true;
    return true;
  }

  std::string token_;
  std::string command_;
  bool want_argument_ = false;
  bool too_long_ = false;
};

// Splits a byte stream into lines (LF or CRLF), with a length limit.
class line_splitter {
 public:
  explicit line_splitter(std::size_t max_line = default_max_admin_line) : max_line_(max_line) {}

  // Calls on_line(line) per complete line; returns false once a line is too long.
  template <class OnLine>
  bool feed(std::string_view bytes, OnLine&& on_line) {
    while (!bytes.empty()) {
      std::size_t end = bytes.find('\n');
      std::string_view piece = bytes.substr(0, end);
      if (partial_.size() + piece.size() > max_line_) return false;
      if (end == std::string_view::npos) {
        partial_.append(piece.data(), piece.size());
        return true;
      }
      bytes.remove_prefix(end + 1);
      std::string_view line = piece;
      if (!partial_.empty()) {
        partial_.append(piece.data(), piece.size());
        line = partial_;
      }
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      on_line(line);
      partial_.clear();
    }
    return true;
  }

 private:
  std::size_t max_line_;
  std::string partial_;
};

// A native command line: words separated by blanks; words of the form key=value
// are options, the others positional arguments.
struct command_line {
  std::string_view verb;
  std::vector<std::string_view> args;
  std::vector<std::pair<std::string_view, std::string_view>> options;

  bool option(std::string_view key, std::string_view& value) const {
    for (auto& o : options)
      if (o.first == key) {
        value = o.second;
        return true;
      }
    return false;
  }
};

inline command_line parse_command(std::string_view line) {
  command_line c;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (start == i) break;
    std::string_view word = line.substr(start, i - start);
    std::size_t eq = word.find('=');
    if (c.verb.empty()) c.verb = word;
    else if (eq != std::string_view::npos && eq > 0) c.options.emplace_back(word.substr(0, eq), word.substr(eq + 1));
    else c.args.push_back(word);
  }
  return c;
}

// harmony.js's BAL: a number in [min_weight, max_weight] (>>types) is the weight;
// anything else means default_weight (500), as in harmony.js for a non-number:
// no digits, other characters, 0, and a number above max_weight too (the agent
// cannot be told "too heavy": the reply must echo its text). Never an error.
inline int legacy_weight(std::string_view text) noexcept {
  int w = default_weight;
  return parse_weight(text, w) ? default_weight : w;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>proxy-header  sans-IO PROXY protocol v1 and v2 headers: written towards backends, read from upstream
// The PROXY protocol (HAProxy's proxy-protocol.txt) puts the client's and the
// proxy's addresses in front of a connection's first byte, so that whoever is
// behind a TCP proxy still sees who the client is. Version 1 is one text line of
// at most 107 bytes; version 2 a 16-byte binary header and an address block.

// The two ends a header describes: `source` is the client, `destination` where it
// connected. `local` (v2 LOCAL, v1 UNKNOWN): the sender speaks for itself, the
// receiver keeps the connection's own addresses.
struct proxy_addresses {
  resolved_address source;
  resolved_address destination;
  bool local = false;
};

inline constexpr char proxy_v2_signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};
inline constexpr std::size_t proxy_v2_fixed = 16;      // signature, version/command, family, length
inline constexpr std::size_t proxy_header_max = proxy_v2_fixed + 0xffff;

// Text of an address, as a v1 line carries it: dotted quad, or RFC 5952 IPv6
// (lower-case hex, the longest run of two or more zero groups as "::").
inline std::string address_text(const resolved_address& a) {
  std::string out;
  if (a.family == ip_family::v4) {
    for (int i = 0; i < 4; ++i) {
      if (i) out.push_back('.');
      out += std::to_string(a.bytes[i]);
    }
    return out;
  }
  if (a.family != ip_family::v6) return out;
  unsigned groups[8];
  for (int i = 0; i < 8; ++i) groups[i] = (unsigned{a.bytes[2 * i]} << 8) | a.bytes[2 * i + 1];
  int best = -1, best_length = 0;
  for (int i = 0; i < 8;) {
    if (groups[i] != 0) {
      ++i;
      continue;
    }
    int j = i;
    while (j < 8 && groups[j] == 0) ++j;
    if (j - i > best_length && j - i >= 2) best = i, best_length = j - i;
    i = j;
  }
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; ++i) {
    if (i == best) {
      out += "::";
      i += best_length - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out.push_back(':');
    bool started = false;
    for (int shift = 12; shift >= 0; shift -= 4) {
      unsigned digit = (groups[i] >> shift) & 15;
      if (digit || started || shift == 0) {
        out.push_back(hex[digit]);
        started = true;
      }
    }
  }
  return out;
}

// Parses a dotted quad (exactly four decimal parts of 0-255, no leading zeros
// beyond "0") or an IPv6 address (with "::" and an embedded dotted quad).
inline bool parse_address_text(std::string_view text, resolved_address& out) {
  auto parse_v4 = [](std::string_view t, std::uint8_t* into) {
    int part = 0;
    std::size_t i = 0;
    while (part < 4) {
      std::size_t start = i;
      unsigned value = 0;
      while (i < t.size() && t[i] >= '0' && t[i] <= '9' && i - start < 3) value = value * 10 + unsigned(t[i++] - '0');
      if (i == start || value > 255 || (i - start > 1 && t[start] == '0')) return false;
      into[part++] = static_cast<std::uint8_t>(value);
      if (part < 4) {
        if (i >= t.size() || t[i] != '.') return false;
        ++i;
      }
    }
    return i == t.size();
  };
  out = resolved_address{};
  if (text.find(':') == std::string_view::npos) {
    if (!parse_v4(text, out.bytes)) return false;
    out.family = ip_family::v4;
    return true;
  }
  if (text.size() > 45) return false;
  std::uint8_t bytes[16] = {};
  int filled = 0, gap = -1;
  std::size_t i = 0;
  if (text.substr(0, 2) == "::") {
    gap = 0;
    i = 2;
  } else if (text[0] == ':') {
    return false;
  }
  while (i < text.size()) {
    std::size_t end = text.find(':', i);
    std::string_view piece = text.substr(i, end == std::string_view::npos ? std::string_view::npos : end - i);
    if (piece.find('.') != std::string_view::npos) {  // the last 32 bits as a dotted quad
      if (end != std::string_view::npos || filled > 12 || !parse_v4(piece, bytes + filled)) return false;
      filled += 4;
      i = text.size();
      break;
    }
    if (piece.empty() || piece.size() > 4 || filled >= 16) return false;
    unsigned value = 0;
    for (char c : piece) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      value = value * 16 + unsigned(d);
    }
    bytes[filled++] = static_cast<std::uint8_t>(value >> 8);
    bytes[filled++] = static_cast<std::uint8_t>(value & 0xff);
    if (end == std::string_view::npos) {
      i = text.size();
      break;
    }
    i = end + 1;
    if (i < text.size() && text[i] == ':') {
      if (gap >= 0) return false;  // a second "::"
      gap = filled;
      ++i;
    } else if (i == text.size()) {
      return false;  // a trailing single ':'
    }
  }
  if (gap < 0 ? filled != 16 : filled > 14) return false;
  out.family = ip_family::v6;
  if (gap < 0) {
    std::memcpy(out.bytes, bytes, 16);
  } else {
    std::memcpy(out.bytes, bytes, static_cast<std::size_t>(gap));
    std::size_t tail = static_cast<std::size_t>(filled - gap);
    std::memcpy(out.bytes + 16 - tail, bytes + gap, tail);
  }
  return true;
}

// The header for a connection from `a.source` to `a.destination`. Addresses a
// header cannot carry (two families that differ, none known) are written as v1
// UNKNOWN and v2 UNSPEC: the receiver then keeps the connection's own.
inline std::string encode_proxy_header(proxy_protocol v, const proxy_addresses& a) {
  bool same = a.source.family == a.destination.family && a.source.family != ip_family::none && !a.local;
  if (v == proxy_protocol::v1) {
    if (!same) return "PROXY UNKNOWN\r\n";
    return std::string("PROXY ") + (a.source.family == ip_family::v4 ? "TCP4 " : "TCP6 ") + address_text(a.source) +
           " " + address_text(a.destination) + " " + std::to_string(a.source.port) + " " +
           std::to_string(a.destination.port) + "\r\n";
  }
  if (v != proxy_protocol::v2) return {};
  std::string out(proxy_v2_signature, sizeof proxy_v2_signature);
  out.push_back(static_cast<char>(a.local ? 0x20 : 0x21));  // version 2, LOCAL or PROXY
  if (!same) {
    out.push_back('\0');  // UNSPEC
    out.append(2, '\0');
    return out;
  }
  bool v4 = a.source.family == ip_family::v4;
  std::size_t n = v4 ? 4 : 16;
  out.push_back(static_cast<char>(v4 ? 0x11 : 0x21));  // INET or INET6, STREAM
  std::size_t length = 2 * n + 4;
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length & 0xff));
  out.append(reinterpret_cast<const char*>(a.source.bytes), n);
  out.append(reinterpret_cast<const char*>(a.destination.bytes), n);
  for (std::uint16_t port : {a.source.port, a.destination.port}) {
    out.push_back(static_cast<char>(port >> 8));
    out.push_back(static_cast<char>(port & 0xff));
  }
  return out;
}

// What the first bytes of a connection from an upstream proxy say.
struct proxy_parse {
  enum class status { incomplete, done, invalid };
  status result = status::incomplete;
  std::size_t consumed = 0;  // with done: the header's length; the stream's data follows it
  proxy_protocol version = proxy_protocol::none;
  proxy_addresses addresses;
  const char* why = "";  // with invalid: what is wrong, for the log
};

// Reads a v1 or v2 header from the start of `bytes` (what has arrived so far).
// incomplete: read more (never past proxy_header_max); invalid: not a header,
// or a malformed one: refuse the connection.
inline proxy_parse parse_proxy_header(std::string_view bytes) {
  proxy_parse p;
  auto fail = [&](const char* why) {
    p.result = proxy_parse::status::invalid;
    p.why = why;
    return p;
  };
  std::string_view sig(proxy_v2_signature, sizeof proxy_v2_signature);
  std::size_t prefix = std::min(bytes.size(), sig.size());
  if (bytes.substr(0, prefix) == sig.substr(0, prefix)) {
    if (bytes.size() < proxy_v2_fixed) return p;
    auto b = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
    if ((b(12) >> 4) != 2) return fail("PROXY v2: not version 2");
    unsigned command = b(12) & 15;
    if (command > 1) return fail("PROXY v2: unknown command");
    std::size_t length = (std::size_t{b(14)} << 8) | b(15);
    if (bytes.size() < proxy_v2_fixed + length) return p;
    p.version = proxy_protocol::v2;
    p.consumed = proxy_v2_fixed + length;
    p.result = proxy_parse::status::done;
    unsigned family = b(13) >> 4, transport = b(13) & 15;
    if (family > 3 || transport > 2) return fail("PROXY v2: unknown address family or transport");
    if (command == 0 || family == 0 || family == 3) {  // LOCAL, UNSPEC, UNIX: the connection's own addresses
      p.addresses.local = true;
      return p;
    }
    std::size_t n = family == 1 ? 4 : 16;
    if (length < 2 * n + 4) return fail("PROXY v2: address block too short");
    ip_family f = family == 1 ? ip_family::v4 : ip_family::v6;
    p.addresses.source.family = p.addresses.destination.family = f;
    std::memcpy(p.addresses.source.bytes, bytes.data() + 16, n);
    std::memcpy(p.addresses.destination.bytes, bytes.data() + 16 + n, n);
    p.addresses.source.port = static_cast<std::uint16_t>((b(16 + 2 * n) << 8) | b(17 + 2 * n));
    p.addresses.destination.port = static_cast<std::uint16_t>((b(18 + 2 * n) << 8) | b(19 + 2 * n));
    return p;  // TLVs after the addresses are skipped with the rest of `length`
  }
  std::string_view v1 = "PROXY ";
  prefix = std::min(bytes.size(), v1.size());
  if (bytes.substr(0, prefix) != v1.substr(0, prefix)) return fail("no PROXY header");
  std::size_t end = bytes.find("\r\n");
  if (end == std::string_view::npos) {
    if (bytes.size() >= proxy_v1_max) return fail("PROXY v1: no CRLF within 107 bytes");
    return p;
  }
  if (end + 2 > proxy_v1_max) return fail("PROXY v1: longer than 107 bytes");
  p.version = proxy_protocol::v1;
  p.consumed = end + 2;
  p.result = proxy_parse::status::done;
  std::string_view line = bytes.substr(6, end - 6);
  std::string_view fields[5];
  std::size_t count = 0;
  while (!line.empty() && count < 5) {
    std::size_t space = line.find(' ');
    fields[count++] = line.substr(0, space);
    line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  }
  if (count >= 1 && fields[0] == "UNKNOWN") {  // anything may follow, up to the CRLF
    p.addresses.local = true;
    return p;
  }
  if (count != 5 || !line.empty() || (fields[0] != "TCP4" && fields[0] != "TCP6"))
    return fail("PROXY v1: not TCP4/TCP6 with two addresses and two ports");
  ip_family f = fields[0] == "TCP4" ? ip_family::v4 : ip_family::v6;
  if (!parse_address_text(fields[1], p.addresses.source) || !parse_address_text(fields[2], p.addresses.destination) ||
      p.addresses.source.family != f || p.addresses.destination.family != f)
    return fail("PROXY v1: a malformed address");
  std::uint16_t* ports[2] = {&p.addresses.source.port, &p.addresses.destination.port};
  for (int i = 0; i < 2; ++i) {
    std::string_view t = fields[3 + i];
    unsigned value = 0;
    if (t.empty() || t.size() > 5 || (t.size() > 1 && t[0] == '0')) return fail("PROXY v1: a malformed port");
    for (char c : t) {
      if (c < '0' || c > '9') return fail("PROXY v1: a malformed port");
      value = value * 10 + unsigned(c - '0');
    }
    if (value > 65535) return fail("PROXY v1: a malformed port");
    *ports[i] = static_cast<std::uint16_t>(value);
  }
  return p;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>affinity  sans-IO persistence table: client key -> backend lease, bounded, idle TTL
// Which backend a client (by its host key) went to last, for persistence. The
// table is bounded twice: an entry unused for longer than the TTL is expired (not
// found, and dropped by prune), and when the table is full a prune makes room,
// dropping the oldest half if nothing has expired. Times are caller milliseconds.
struct lease {
  std::uint32_t slot = selector::npos;
  std::uint32_t generation = 0;
  bool valid() const noexcept { return slot != selector::npos; }
  bool operator==(const lease& o) const noexcept { return slot == o.slot && generation == o.generation; }
};

class affinity_table {
 public:
  struct limits {
    std::size_t entries = 100000;
    std::int64_t ttl_ms = 3600000;
  };

  affinity_table() = default;
  explicit affinity_table(limits l) : limits_(l) {}

  // The backend remembered for `key`, or nullptr when there is none or it expired.
  const lease* find(std::string_view key, std::int64_t now) const {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end() || expired(it->second, now)) return nullptr;
    return &it->second.backend;
  }

  // Remembers (or refreshes) the backend of `key` as used at `now`.
  void remember(std::string_view key, lease backend, std::int64_t now) {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) {
      if (entries_.size() >= limits_.entries) prune(now);
      it = entries_.emplace(std::string(key), entry{}).first;
    }
    it->second.backend = backend;
    it->second.last_used = now;
  }

  bool forget(std::string_view key) { return entries_.erase(std::string(key)) > 0; }

  // Drops the expired entries; if the table is still full, the oldest half goes
  // too. Returns how many entries were dropped.
  std::size_t prune(std::int64_t now) {
    std::size_t before = entries_.size();
    for (auto it = entries_.begin(); it != entries_.end();)
      it = expired(it->second, now) ? entries_.erase(it) : std::next(it);
    if (entries_.size() >= limits_.entries && !entries_.empty()) {
      std::vector<std::int64_t> ages;
      ages.reserve(entries_.size());
      for (auto& e : entries_) ages.push_back(e.second.last_used);
      auto middle = ages.begin() + static_cast<std::ptrdiff_t>(ages.size() / 2);
      std::nth_element(ages.begin(), middle, ages.end());
      std::int64_t cut = *middle;
      for (auto it = entries_.begin(); it != entries_.end();)
        it = it->second.last_used <= cut ? entries_.erase(it) : std::next(it);
    }
    return before - entries_.size();
  }

  std::size_t size() const noexcept { return entries_.size(); }
  const limits& bounds() const noexcept { return limits_; }

 private:
  struct entry {
    lease backend;
    std::int64_t last_used = 0;
  };
  bool expired(const entry& e, std::int64_t now) const noexcept { return now - e.last_used > limits_.ttl_ms; }

  limits limits_;
  std::unordered_map<std::string, entry> entries_;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>health  a backend's health: passive failure counting, one trial, back-off, active checks
// Sans-IO: plain data, time passed in (milliseconds). The registry keeps one per
// backend and asks it whether the backend may take a connection; the sessions
// report what their attempts did, the checker what its probes did.
//
// Passive (nginx's max_fails / fail_timeout): `max_fails` failed attempts within
// `fail_timeout` take the backend out for `fail_timeout`. Then exactly one
// connection is let through as a trial: when the backend answers it, the backend
// is back; when it fails, the backend is out again for twice as long as the last
// time, up to health_policy::max_out_ms. max_fails 0 turns passive detection off.
//
// Active: `fall` failed probes in a row mark the backend down, `rise` good ones in a
// row mark it up again (HAProxy's rise and fall). A good probe also lets a passively
// failed backend take its trial at once instead of waiting out its back-off.
// What a proxied connection's attempt on a backend came to, as the session reports it.
enum class attempt_outcome {
  failed,     // refused, connect timeout, reset before the backend's first byte
  answered,   // the backend sent its first byte, or served the connection without failing
  abandoned,  // the connection ended before the attempt could tell
};

struct health_policy {
  int max_fails = 1;
  std::int64_t fail_timeout_ms = 10000;
  std::int64_t max_out_ms = 300000;  // the cap of the back-off
  // A trial that has not been decided after this long is given up, so that a lost
  // report cannot keep a backend out for ever.
  std::int64_t trial_limit_ms = 60000;
  int rise = 2;
  int fall = 3;

  // How long a backend stays out after its `strikes`-th failed trial in a row
  // (0: the failures that first took it out).
  std::int64_t out_for(int strikes) const noexcept {
    std::int64_t cap = std::max(max_out_ms, fail_timeout_ms);
    std::int64_t t = fail_timeout_ms;
    for (int i = 0; i < strikes && t < cap; ++i) t *= 2;
    return std::min(t, cap);
  }
};

class backend_health {
 public:
  // Whether it may take a new connection now (a trial included).
  bool usable(std::int64_t now) const noexcept {
    if (checked_down_) return false;
    if (!out_) return true;
    return now >= retry_at_ && (!trial_ || now - trial_since_ > trial_limit_ms_);
  }
  // Out of rotation by either detector (a trial may still be due): its state is "down".
  bool down() const noexcept { return out_ || checked_down_; }
  bool passively_out() const noexcept { return out_; }
  bool checked_down() const noexcept { return checked_down_; }
  // When a passively failed backend may take its trial.
  std::int64_t retry_at() const noexcept { return retry_at_; }
  // Whether an attempt's outcome may change anything: a trial, or failures being counted.
  bool watching() const noexcept { return out_ || fails_ > 0; }

  // A connection was given to it; true when that connection is its trial.
  bool picked(std::int64_t now, const health_policy& p) noexcept {
    if (!out_) return false;
    trial_ = true;
    trial_since_ = now;
    trial_limit_ms_ = p.trial_limit_ms;
    return true;
  }

  // An attempt failed (refused, connect timeout, reset before the first byte). True
  // when this took the backend out (again).
  bool failed(std::int64_t now, bool trial, const health_policy& p) noexcept {
    if (p.max_fails <= 0) return false;
    if (out_) {
      if (!trial) return false;  // an attempt that began before it went out says nothing new
      trial_ = false;
      ++strikes_;
      retry_at_ = now + p.out_for(strikes_);
      return true;
    }
    if (fails_ == 0 || now - first_fail_ > p.fail_timeout_ms) {
      fails_ = 0;
      first_fail_ = now;
    }
    if (++fails_ < p.max_fails) return false;
    out_ = true;
    trial_ = false;
    strikes_ = 0;
    fails_ = 0;
    retry_at_ = now + p.out_for(0);
    return true;
  }

  // An attempt succeeded (the backend answered, or served the connection). True when
  // this brought the backend back.
  bool succeeded(bool trial) noexcept {
    if (!out_) {
      fails_ = 0;
      return false;
    }
    if (!trial) return false;
    out_ = trial_ = false;
    strikes_ = 0;
    return true;
  }

  // The trial connection ended before it could tell (the client left first).
  void abandoned(bool trial) noexcept {
    if (trial) trial_ = false;
  }

  // One active probe's result. True when it changed checked_down().
  bool checked(bool ok, std::int64_t now, const health_policy& p) noexcept {
    if (ok) {
      fall_count_ = 0;
      if (out_ && !trial_) retry_at_ = std::min(retry_at_, now);
      if (!checked_down_) return false;
      if (++rise_count_ < p.rise) return false;
      checked_down_ = false;
      rise_count_ = 0;
      return true;
    }
    rise_count_ = 0;
    if (checked_down_) return false;
    if (++fall_count_ < p.fall) return false;
    checked_down_ = true;
    fall_count_ = 0;
    return true;
  }

  // Active checks were turned off: only passive detection judges it.
  void forget_checks() noexcept { checked_down_ = false, rise_count_ = fall_count_ = 0; }

 private:
  bool out_ = false;           // passively out of rotation
  bool trial_ = false;         // its trial connection is going on
  bool checked_down_ = false;  // active checks failed `fall` times in a row
  int fails_ = 0;              // failures in the window that began at first_fail_
  int strikes_ = 0;            // failed trials since it went out
  int rise_count_ = 0;
  int fall_count_ = 0;
  std::int64_t first_fail_ = 0;
  std::int64_t retry_at_ = 0;
  std::int64_t trial_since_ = 0;
  std::int64_t trial_limit_ms_ = 0;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>state-file  sans-IO state file: the kept registry as versioned text, and back
// What --state-file keeps of one backend that registered over the admin port, as
// plain values: the I/O layer writes format_state()'s text atomically and hands
// what it reads to parse_state(), the one entry point for untrusted bytes.
//
//   harmony-state 1
//   backend id=5F38…7BDA kind=legacy host=10.0.0.7 addr=10.0.0.7 port=11081 weight=1000 maxconn=0 backup=0 proxy=none drained=0 state=ready ack=1764651234567
//   end 1
//
// One `backend` line per backend: space-separated key=value fields in any order;
// unknown keys are skipped (a later version 1 writer may add some); `-` is an empty
// value. `end N` closes the file and counts the backend lines, so a cut file is told
// from a complete one. Lines starting with `#` and blank lines are comments.
enum class kept_kind : std::uint8_t {
  legacy,  // a harmony.js agent: no live connection, kept alive by acks
  native,  // a harmony/1 agent: offline until its agent connects and registers again
};

struct state_record {
  std::string id;
  kept_kind kind = kept_kind::legacy;
  std::string host;  // where it is reached, as registered (a name or an address)
  std::string addr;  // the address it resolved to, numeric; empty while it has no port
  std::uint16_t port = 0;  // 0: no service port yet
  int weight = default_weight;
  int maxconn = 0;
  bool backup = false;
  proxy_protocol proxy = proxy_protocol::none;
  bool drained = false;  // by an operator
  readiness reported = readiness::ready;  // by its agent
  std::int64_t ack_unix_ms = 0;  // the last ack, wall clock (ms since 1970)
  std::string source;
};

struct state_problem {
  std::size_t line = 0;  // 1-based; 0 for the file as a whole
  std::string what;
};

struct parsed_state {
  std::vector<state_record> records;   // every backend line that could be read
  std::vector<state_problem> problems;  // what could not, line by line
  bool complete = false;                // the `end` line was found and its count matches
};

inline constexpr int state_version = 1;
inline constexpr std::size_t max_state_problems = 100;  // problems listed beyond this are counted only

inline const char* to_string(kept_kind k) noexcept { return k == kept_kind::native ? "native" : "legacy"; }

// A value the format can carry: no blank, no control byte, not empty (written as `-`).
inline bool state_token(std::string_view v) noexcept {
  for (char c : v)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  return true;
}

// The text of a state file holding `records`. A record whose text fields the format
// cannot carry is left out (none can come from the admin parsers, which split on blanks).
inline std::string format_state(const std::vector<state_record>& records) {
  std::string out = "# harmony state file: backends registered over the admin port (README, State file)\n";
  out += "harmony-state " + std::to_string(state_version) + "\n";
  auto text = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
  std::size_t written = 0;
  for (const state_record& r : records) {
    if (!is_backend_id(r.id) || !state_token(r.host) || !state_token(r.addr) || !state_token(r.source)) continue;
    out += "backend id=" + r.id + " kind=" + to_string(r.kind) + " host=" + text(r.host) + " addr=" + text(r.addr) +
           " port=" + std::to_string(r.port) + " weight=" + std::to_string(r.weight) +
           " maxconn=" + std::to_string(r.maxconn) + " backup=" + (r.backup ? "1" : "0") +
           " proxy=" + harmony::to_string(r.proxy) + " drained=" + (r.drained ? "1" : "0") + " state=" + harmony::to_string(r.reported) +
           " ack=" + std::to_string(r.ack_unix_ms) + " source=" + text(r.source) + "\n";
    ++written;
  }
  out += "end " + std::to_string(written) + "\n";
  return out;
}

namespace state_parsing {

inline bool flag_value(std::string_view v, bool& out) noexcept {
  if (v == "0" || v == "1") {
    out = v == "1";
    return true;
  }
  return false;
}

// One `backend` line's fields (after the word); what is wrong, empty when it reads.
inline std::string backend_line(std::string_view fields, state_record& r) {
  bool has_id = false, has_host = false, has_port = false;
  std::size_t at = 0;
  while (at < fields.size()) {
    while (at < fields.size() && (fields[at] == ' ' || fields[at] == '\t')) ++at;
    std::size_t end = at;
    while (end < fields.size() && fields[end] != ' ' && fields[end] != '\t') ++end;
    std::string_view field = fields.substr(at, end - at);
    at = end;
    if (field.empty()) continue;
    std::size_t eq = field.find('=');
    if (eq == std::string_view::npos || eq == 0) return "'" + std::string(field) + "' is not key=value";
    std::string_view key = field.substr(0, eq), value = field.substr(eq + 1);
    if (value.empty()) return std::string(key) + " has no value";
    // What format_state could not write back (a control byte) is not read either.
    if (!state_token(value)) return std::string(key) + " holds a control character";
    std::string text = value == "-" ? std::string() : std::string(value);
    std::uint64_t n = 0;
    long long number = 0;
    if (key == "id") {
      if (!is_backend_id(value)) return "id '" + std::string(value) + "' is not 32 uppercase hex digits";
      r.id = text;
      has_id = true;
    } else if (key == "kind") {
      if (value == "legacy") r.kind = kept_kind::legacy;
      else if (value == "native") r.kind = kept_kind::native;
      else return "kind '" + std::string(value) + "' is not legacy or native";
    } else if (key == "host") {
      r.host = text;
      has_host = true;
    } else if (key == "addr") {
      r.addr = text;
    } else if (key == "port") {
      if (!parse_uint(value, 65535, n)) return "port '" + std::string(value) + "' is not 0 to 65535";
      r.port = static_cast<std::uint16_t>(n);
      has_port = true;
    } else if (key == "weight") {
      if (parse_weight(value, r.weight)) return "weight '" + std::string(value) + "' is out of range";
    } else if (key == "maxconn") {
      if (parse_integer(value, 0, max_maxconn, number)) return "maxconn '" + std::string(value) + "' is out of range";
      r.maxconn = static_cast<int>(number);
    } else if (key == "backup") {
      if (!flag_value(value, r.backup)) return "backup is 0 or 1";
    } else if (key == "proxy") {
      if (parse_proxy_protocol(value, r.proxy)) return "proxy '" + std::string(value) + "' is not none, v1 or v2";
    } else if (key == "drained") {
      if (!flag_value(value, r.drained)) return "drained is 0 or 1";
    } else if (key == "state") {
      if (parse_readiness(value, r.reported)) return "state '" + std::string(value) + "' is not ready, drain or down";
    } else if (key == "ack") {
      if (parse_integer(value, 0, std::numeric_limits<long long>::max(), number))
        return "ack '" + std::string(value) + "' is not a time";
      r.ack_unix_ms = number;
    } else if (key == "source") {
      r.source = text;
    }  // another key: from a later writer of this version, skipped
  }
  if (!has_id) return "no id";
  if (!has_host) return "no host";
  if (!has_port) return "no port";
  if (r.port != 0 && r.addr.empty()) return "a port but no addr";
  return {};
}

}  // namespace state_parsing

// Reads a state file's text. Never fails as a whole: what can be read is returned,
// and each line that cannot (and a missing or wrong `end`) is a problem. A file of
// another version gives no record. Duplicate ids: the first line wins.
inline parsed_state parse_state(std::string_view text) {
  parsed_state out;
  auto problem = [&](std::size_t line, std::string what) {
    if (out.problems.size() < max_state_problems) out.problems.push_back(state_problem{line, std::move(what)});
  };
  bool versioned = false, ended = false;
  std::size_t line_number = 0, backend_lines = 0;
  std::unordered_map<std::string, std::size_t> first_line;  // by id
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    bool cut = end == std::string_view::npos;  // the last line has no newline: written partly
    if (cut) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;
    line.remove_prefix(first);
    if (cut && versioned) {
      problem(line_number, "the file ends inside this line (cut short)");
      break;
    }
    if (ended) {
      problem(line_number, "text after the end line");
      break;
    }
    std::size_t space = line.find_first_of(" \t");
    std::string_view word = line.substr(0, space);
    std::string_view rest = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    if (!versioned) {
      std::uint64_t version = 0;
      if (word != "harmony-state" || !parse_uint(rest, 1000000, version)) {
        problem(line_number, "not a harmony state file (expected 'harmony-state " + std::to_string(state_version) + "')");
        return out;
      }
      if (version != static_cast<std::uint64_t>(state_version)) {
        problem(line_number, "version " + std::to_string(version) + " is not " + std::to_string(state_version));
        return out;
      }
      versioned = true;
      continue;
    }
    if (word == "backend") {
      ++backend_lines;
      state_record r;
      std::string wrong = state_parsing::backend_line(rest, r);
      if (wrong.empty()) {
        auto seen = first_line.emplace(r.id, line_number);
        if (!seen.second) wrong = "id " + r.id + " is listed on line " + std::to_string(seen.first->second) + " already";
      }
      if (!wrong.empty()) problem(line_number, wrong);
      else out.records.push_back(std::move(r));
      continue;
    }
    if (word == "end") {
      std::uint64_t count = 0;
      if (!parse_uint(rest, std::numeric_limits<std::uint32_t>::max(), count)) {
        problem(line_number, "the end line has no count");
      } else if (count != backend_lines) {
        problem(line_number, "the end line counts " + std::to_string(count) + " backends, the file has " +
                                 std::to_string(backend_lines));
      } else {
        out.complete = true;
      }
      ended = true;
      continue;
    }
    problem(line_number, "unknown line '" + std::string(word) + "'");
  }
  if (!versioned && out.problems.empty()) problem(0, "empty: not a harmony state file");
  else if (versioned && !ended) problem(line_number, "no end line: the file is cut short");
  return out;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>registry  the backend table: sans-IO, shared between loops through locked<>
// The backend table. It holds no OS type: addresses are resolved_address, ids
// come from an injected generator, and it has no lock of its own. Every event
// loop shares one, so the server keeps it in a locked<registry> and each call
// site takes the lock, once and briefly, for a pick, a release or an admin change.
struct pick_result {
  lease chosen;
  resolved_address to;
  // No pick, but only because the backends that could serve are at their maxconn:
  // the connection may wait for a release instead of being turned away.
  bool full = false;
  // Health (>>health): this connection is the trial of a backend that failed, and
  // whether its outcome must be reported (a trial, or failures are being counted).
  bool trial = false;
  bool watch = false;
  proxy_protocol proxy = proxy_protocol::none;  // the header the chosen backend is sent first
};

// One kept backend (--state-file, >>state-file) and the address it is reached at; the
// server turns the address into text and back, the registry never does.
struct kept_backend {
  state_record record;
  resolved_address to;
};

struct registry_limits {
  std::size_t backends = 100000;
  std::size_t affinity_entries = 100000;
  std::int64_t affinity_ttl_ms = 3600000;
};

// Makes a new backend id (32 uppercase hex digits, see is_backend_id). The server
// injects the OS random source; tests inject a counter.
using id_generator = std::function<std::string()>;

// A value of T reached only under its mutex: lock() returns a guard that acts as
// a pointer to T and unlocks when it goes, e.g. `backends.lock()->pick(...)`.
template <class T>
class locked {
 public:
  template <class... Args>
  explicit locked(Args&&... args) : value_(std::forward<Args>(args)...) {}
  locked(const locked&) = delete;
  locked& operator=(const locked&) = delete;

  class guard {
   public:
    guard(std::mutex& m, T& v, const std::function<void(T&, std::unique_lock<std::mutex>&)>& after)
        : lock_(m), value_(v), after_(after) {}
    ~guard() {
      if (after_) after_(value_, lock_);
    }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;
    T* operator->() const noexcept { return &value_; }
    T& operator*() const noexcept { return value_; }

   private:
    std::unique_lock<std::mutex> lock_;
    T& value_;
    const std::function<void(T&, std::unique_lock<std::mutex>&)>& after_;
  };
  guard lock() { return guard(mutex_, value_, after); }

  // Runs as each guard goes, with the lock still held: it may take what it needs
  // from the value, unlock, and then act (the server logs the registry's state
  // changes this way, never under the lock). Set before the value is shared.
  std::function<void(T&, std::unique_lock<std::mutex>&)> after;

 private:
  std::mutex mutex_;
  T value_;
};

class registry {
 public:
  using limits = registry_limits;
  registry(algorithm a, duration host_timeout, bool persistent, limits l, id_generator make_id)
      : algorithm_(a),
        host_timeout_ms_(host_timeout.count()),
        persistent_(persistent),
        limits_(l),
        affinities_(affinity_table::limits{l.affinity_entries, l.affinity_ttl_ms}),
        make_id_(std::move(make_id)) {
    for (tier& t : tiers_) t.picks.set_algorithm(heap_algorithm(a));
  }

  // Whether a weight is in the one range the library accepts (>>types).
  static bool valid_weight(int weight) noexcept { return weight >= min_weight && weight <= max_weight; }

  // Adds a backend. `expires`: it must ack within the host timeout to stay eligible
  // (registered agents); static backends added through the API never expire.
  // `wanted_id`: an id the backend already had (an agent rejoining a balancer
  // that restarted), kept when no other backend has it.
  std::error_code add(const endpoint& at, const resolved_address* resolved, int weight, bool expires,
                      std::string* id_out, std::int64_t now, std::string_view wanted_id = {}) {
    if (!valid_weight(weight)) return make_error_code(errc::bad_option);
    if (by_id_.size() >= limits_.backends) return make_error_code(errc::too_many_backends);
    if (!wanted_id.empty() && (!is_backend_id(wanted_id) || by_id_.count(std::string(wanted_id))))
      wanted_id = {};
    std::string id(wanted_id);
    // A generator that keeps repeating itself must not hang the balancer.
    for (int tries = 0; id.empty() || by_id_.count(id); ++tries) {
      if (tries == 64 || !make_id_) return make_error_code(errc::bad_option);
      id = make_id_();
    }
    std::uint32_t slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(records_.size());
      records_.emplace_back();
    }
    record& r = records_[slot];
    std::uint32_t generation = r.generation;
    r = record{};
    r.generation = generation;
    r.used = true;
    r.id = std::move(id);
    r.at = at;
    if (resolved) {
      r.to = *resolved;
      r.routable = at.port != 0;
    }
    r.weight = weight;
    r.expires = expires;
    r.last_ack = now;
    by_id_.emplace(r.id, slot);
    refresh(slot, now);
    r.shown = shown_state(slot, now);
    reason_.clear();
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") registered, weight " + std::to_string(weight) +
                       ": " + r.shown);
    if (id_out) *id_out = r.id;
    changed();
    return {};
  }

  // `why`, when given, ends the log line of the removal.
  std::error_code remove(std::string_view id, std::string_view why = {}) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    by_id_.erase(records_[slot].id);
    record& r = records_[slot];
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") removed" +
                       (why.empty() ? std::string() : ": " + std::string(why)));
    if (r.ramping) ramping_.erase(std::find(ramping_.begin(), ramping_.end(), slot));
    r.ramping = false;
    if (r.resting) resting_.erase(std::find(resting_.begin(), resting_.end(), slot));
    r.resting = false;
    r.listed = false;
    place(slot);
    tiers_[r.backup].picks.reset(slot);
    r.used = false;
    ++r.generation;  // open leases of the old backend no longer count against the slot
    r.id.clear();
    free_slots_.push_back(slot);
    changed();
    return {};
  }

  std::error_code set_weight(std::string_view id, int weight) {
    if (!valid_weight(weight)) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      r.weight = weight;
      tiers_[r.backup].picks.set_weight(slot, effective_weight(r, ramp_checked_));
      place(slot);
    });
  }

  // `why`, when given, is the reason its log line gives.
  std::error_code drain(std::string_view id, bool on, std::int64_t now, std::string_view why = {}) {
    return update(id, now, [&](record& r, std::uint32_t) {
      if (r.draining != on) reason_ = !why.empty() ? std::string(why) : on ? "drained" : "no longer drained";
      r.draining = on;
    });
  }

  // Sets where the backend is reached (host and port); a port of 0 makes it unroutable.
  std::error_code set_address(std::string_view id, const endpoint& at, const resolved_address& resolved,
                              std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = "serves at " + at.to_string();
      r.at = at;
      r.to = resolved;
      r.routable = at.port != 0;
    });
  }

  std::error_code ack(std::string_view id, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      r.last_ack = now;
      reason_ = "acked again";
    });
  }

  // An agent's live connection keeps its backend online; when it drops, the
  // backend gets no new connections until the agent registers again.
  std::error_code set_online(std::string_view id, bool online, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = online ? "its agent is connected again" : "its agent's connection dropped";
      r.online = online;
      r.tied = true;
      if (online) r.last_ack = now;
    });
  }

  // ---- Reported by the backend's agent (`report`); its maxconn goes through
  // set_maxconn (below), like an operator's.
  bool maxconn_of(std::string_view id, int& out) const {
    std::uint32_t slot;
    if (!find(id, slot)) return false;
    out = records_[slot].maxconn;
    return true;
  }
  // The agent's own readiness: drain and down get no new connections (open ones
  // finish), ready is eligible again. Independent of an operator's drain.
  std::error_code set_readiness(std::string_view id, readiness state, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = std::string("its agent reports ") + to_string(state);
      r.reported = state;
    });
  }
  // ---- end of the agent's report

  // The address a backend registered from, to derive where it serves.
  bool address_of(std::string_view id, endpoint& at) const {
    std::uint32_t slot;
    if (!find(id, slot)) return false;
    at = records_[slot].at;
    return true;
  }

  bool known(std::string_view id) const {
    std::uint32_t slot;
    return find(id, slot);
  }

  // How long a backend has gone without an ack (-1: unknown id), and the limit.
  std::int64_t silent_for(std::string_view id, std::int64_t now) const {
    std::uint32_t slot;
    return find(id, slot) ? now - records_[slot].last_ack : -1;
  }
  std::int64_t host_timeout_ms() const noexcept { return host_timeout_ms_; }

  // Switches the algorithm of every later pick (open connections stay where they are).
  void set_algorithm(algorithm a) {
    algorithm_ = a;
    for (tier& t : tiers_) {
      t.picks.set_algorithm(heap_algorithm(a));
      mark_stale(t);
    }
  }
  algorithm get_algorithm() const noexcept { return algorithm_; }

  // Persistence on or off for later picks; the remembered choices are kept, so that
  // turning it on again finds them (each still expires at its TTL).
  void set_persistent(bool on) noexcept { persistent_ = on; }
  // A new host timeout: every expiring backend is judged again by it at once.
  void set_host_timeout(std::int64_t ms, std::int64_t now) {
    host_timeout_ms_ = ms;
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot)
      if (records_[slot].used && records_[slot].expires) refresh(slot, now);
  }
  // Backends beyond the new limit are refused from now on; none is removed.
  void set_max_backends(std::size_t n) noexcept { limits_.backends = n; }

  // Seeds the random source of `random` (the server does so once, from the OS CSPRNG).
  void seed(std::uint64_t s) noexcept { random_.seed(s); }

  // A backend's connection limit: at `maxconn` open connections (0: no limit) it
  // gets no new ones until one ends.
  std::error_code set_maxconn(std::string_view id, int maxconn) {
    if (maxconn < 0 || maxconn > max_maxconn) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      r.maxconn = maxconn;
      r.full = at_limit(r);
      place(slot);
    });
  }

  // A backup backend serves only while no primary one can: none is eligible, or
  // every eligible one is at its maxconn.
  std::error_code set_backup(std::string_view id, bool backup) {
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      if (r.backup == backup) return;
      bool listed = r.listed;
      r.listed = false;  // leaves the old tier entirely, then joins the new one
      place(slot);
      tiers_[r.backup].picks.reset(slot);
      r.backup = backup;
      r.listed = listed;
      place(slot);
      for (tier& t : tiers_) mark_stale(t);  // r.hashed speaks of the old tier's table
    });
  }

  // The PROXY protocol header its connections begin with (backend_options::proxy).
  std::error_code set_proxy(std::string_view id, proxy_protocol p) {
    return update(id, -1, [&](record& r, std::uint32_t) { r.proxy = p; });
  }

  // Slow start: a backend that becomes eligible (joins or comes back) ramps its
  // effective weight up over this many milliseconds; 0 turns it off.
  void set_slow_start(std::int64_t ms) { slow_start_ms_ = std::max<std::int64_t>(ms, 0); }

  // Chooses a backend for a client (by its host key) and counts the connection
  // against it. `tried` lists earlier failed attempts of this connection. With
  // persistence, the client's remembered backend comes first while it is eligible
  // and untried; otherwise the selector chooses and the table remembers the choice.
  bool pick(std::int64_t now, std::string_view client_key, const std::vector<lease>& tried, pick_result& out) {
    ramp(now);
    wake(now);
    std::uint32_t chosen = selector::npos;
    auto was_tried = [&](std::uint32_t slot) {
      for (const lease& l : tried)
        if (l.slot == slot && l.generation == records_[slot].generation) return true;
      return false;
    };
    out.full = false;
    out.trial = out.watch = false;
    if (!on_tables_stale_) rebuild_tables();  // nobody rebuilds them elsewhere: before the pick
    bool sticky = persistent_ && !client_key.empty();
    if (sticky) {
      const lease* l = affinities_.find(client_key, now);
      if (l && current(*l) && eligible(l->slot, now) && !records_[l->slot].full && !was_tried(l->slot))
        chosen = l->slot;
    }
    if (chosen == selector::npos) {
      chosen = choose(now, client_key, was_tried);
      if (chosen == selector::npos) {
        out.full = full_ > tried_and_full(tried);  // one it has not tried may make room
        return false;
      }
    }
    record& r = records_[chosen];
    ++r.active;
    ++r.total;
    tiers_[r.backup].picks.set_active(chosen, r.active);
    if (at_limit(r)) {
      r.full = true;
      place(chosen);
    }
    out.chosen = lease{chosen, r.generation};
    out.to = r.to;
    out.proxy = r.proxy;
    out.watch = r.health.watching();
    if (r.health.picked(now, health_)) {
      out.trial = true;
      refresh(chosen, now);  // the one trial: no other connection until it has told
    }
    if (sticky) affinities_.remember(client_key, out.chosen, now);
    return true;
  }

  // ---- Health (>>health). The policy of every backend; passive detection on by default.
  void set_health(const health_policy& p) { health_ = p; }
  const health_policy& health() const noexcept { return health_; }

  // An attempt on `l` failed (refused, timed out, reset before the first byte).
  void attempt_failed(const lease& l, bool trial, std::string_view why, std::int64_t now) {
    if (!current(l)) return;
    record& r = records_[l.slot];
    if (!r.health.failed(now, trial, health_)) return;
    std::int64_t out_for = r.health.retry_at() - now;
    if (trial) {
      reason_ = "its trial connection failed (" + std::string(why) + "); out for " + format_duration(duration(out_for));
    } else {
      int n = std::max(health_.max_fails, 1);
      reason_ = std::to_string(n) + (n == 1 ? " failed attempt" : " failed attempts") + " within " +
                format_duration(duration(health_.fail_timeout_ms)) + " (last: " + std::string(why) + "); out for " +
                format_duration(duration(out_for));
    }
    if (!r.resting) {
      r.resting = true;
      resting_.push_back(l.slot);
    }
    next_wake_ = std::min(next_wake_, r.health.retry_at());
    refresh(l.slot, now);
    reason_.clear();
  }
  // The backend answered an attempt (its first byte), or served it without a failure.
  void attempt_succeeded(const lease& l, bool trial, std::int64_t now) {
    if (!current(l)) return;
    record& r = records_[l.slot];
    if (!r.health.succeeded(trial)) return;
    reason_ = "its trial connection was served";
    refresh(l.slot, now);
    reason_.clear();
  }
  // The attempt ended before it could tell either way.
  void attempt_abandoned(const lease& l, bool trial, std::int64_t now) {
    if (!trial || !current(l)) return;
    records_[l.slot].health.abandoned(true);
    refresh(l.slot, now);  // the trial is free again
  }
  // An active check's result for the backend `id` (>>checker).
  void checked(std::string_view id, bool ok, std::string_view why, std::int64_t now) {
    std::uint32_t slot;
    if (!find(id, slot)) return;
    record& r = records_[slot];
    bool was_out = r.health.passively_out();
    if (r.health.checked(ok, now, health_)) {
      reason_ = ok ? "its health check passed " + std::to_string(health_.rise) + " times in a row"
                   : "its health check failed " + std::to_string(health_.fall) + " times in a row (" +
                         std::string(why) + ")";
    } else if (!(ok && was_out)) {
      return;
    }
    if (ok && was_out) next_wake_ = std::min(next_wake_, now);  // the trial may go now
    refresh(slot, now);
    reason_.clear();
  }
  // What the active checks probe: every backend with an address.
  struct check_target {
    std::string id;
    resolved_address to;
  };
  std::vector<check_target> check_targets() const {
    std::vector<check_target> out;
    for (const record& r : records_)
      if (r.used && r.routable) out.push_back(check_target{r.id, r.to});
    return out;
  }

  // Re-judges at `now` what time alone changes (an ack that is too old, a back-off
  // that is over), so that it is noticed and its state change noted even when no
  // connection comes to pick. The server does this every second.
  void sweep(std::int64_t now) {
    ramp(now);
    wake(now);
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot)
      if (records_[slot].used && records_[slot].expires) refresh(slot, now);  // the rest change by events
  }

  // State changes since last asked, one line of text each: a backend registered,
  // removed, or changing between up, down, expired, draining, offline and no-port.
  bool has_changes() const noexcept { return !changes_.empty(); }
  std::vector<std::string> take_changes() {
    std::vector<std::string> out;
    out.swap(changes_);
    return out;
  }

  // Ends a connection's count against its backend, with the bytes it moved each way
  // (client to backend, backend to client). True when that made room on a backend
  // that was at its maxconn: connections waiting for one may go now.
  bool release(const lease& l, bool failed, std::uint64_t bytes_in = 0, std::uint64_t bytes_out = 0) {
    if (!l.valid() || !current(l)) return false;
    record& r = records_[l.slot];
    if (r.active > 0) --r.active;
    if (failed) ++r.failures;
    r.bytes_in += bytes_in;
    r.bytes_out += bytes_out;
    tiers_[r.backup].picks.set_active(l.slot, r.active);
    if (!r.full || at_limit(r)) return false;
    r.full = false;
    place(l.slot);
    return true;
  }

  // Backends from DNS (>>discovery): the NAME:PORT a backend was resolved from,
  // shown by list(); and a backend's open connections, negative for an unknown id.
  std::error_code set_source(std::string_view id, std::string source) {
    return update(id, -1, [&](record& r, std::uint32_t) { r.source = std::move(source); });
  }
  int active_of(std::string_view id) const {
    std::uint32_t slot;
    return find(id, slot) ? records_[slot].active : -1;
  }

  std::string id_of(const lease& l) const { return current(l) ? records_[l.slot].id : std::string(); }

  std::vector<backend_info> list(std::int64_t now) const {
    std::vector<backend_info> out;
    out.reserve(by_id_.size());
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot) {
      const record& r = records_[slot];
      if (!r.used) continue;
      backend_info b;
      b.id = r.id;
      b.address = r.at;
      b.weight = r.weight;
      b.maxconn = r.maxconn;
      b.backup = r.backup;
      b.active = r.active;
      b.total = r.total;
      b.failures = r.failures;
      b.eligible = eligible(slot, now) && !r.full;
      b.draining = r.draining;
      b.state = state_of(slot, now);
      b.source = r.source;
      b.proxy = r.proxy;
      b.bytes_in = r.bytes_in;
      b.bytes_out = r.bytes_out;
      out.push_back(std::move(b));
    }
    return out;
  }

  std::size_t size() const noexcept { return by_id_.size(); }
  std::size_t affinity_size() const noexcept { return affinities_.size(); }

  // ---- Kept across restarts (--state-file). Called, under the registry's lock, after
  // every change worth keeping (a backend added or removed, an ack, a new weight...),
  // never for a pick or a release: it must only note the change and return.
  void on_change(std::function<void()> f) { on_change_ = std::move(f); }
  // The backends that registered over the admin port (static and DNS backends come
  // from the configuration), with the wall-clock time `unix_now` that is `now`.
  std::vector<kept_backend> keep(std::int64_t now, std::int64_t unix_now) const {
    std::vector<kept_backend> out;
    for (const record& r : records_) {
      if (!r.used || !r.expires) continue;
      kept_backend k;
      state_record& s = k.record;
      s.id = r.id;
      s.kind = r.tied ? kept_kind::native : kept_kind::legacy;
      s.host = r.at.host;
      s.port = r.routable ? r.at.port : 0;
      s.weight = r.weight;
      s.maxconn = r.maxconn;
      s.backup = r.backup;
      s.proxy = r.proxy;
      s.drained = r.draining;
      s.reported = r.reported;
      s.ack_unix_ms = std::max<std::int64_t>(0, unix_now - (now - r.last_ack));
      s.source = r.source;
      if (r.routable) k.to = r.to;
      out.push_back(std::move(k));
    }
    return out;
  }
  // Adds a kept backend again under its id, as it was: its last ack as old as it was
  // then, and a native agent's backend offline until its agent registers again. `to`
  // is where it is reached (null: no service port). errc::bad_option when the id is
  // taken or the record does not fit the registry's ranges.
  std::error_code restore(const state_record& k, const resolved_address* to, std::int64_t now,
                          std::int64_t unix_now) {
    if (!is_backend_id(k.id) || known(k.id) || k.maxconn < 0 || k.maxconn > max_maxconn)
      return make_error_code(errc::bad_option);
    std::string id;
    endpoint at{k.host, k.port};
    if (auto e = add(at, k.port != 0 ? to : nullptr, k.weight, true, &id, now, k.id)) return e;
    set_backup(id, k.backup);
    set_source(id, k.source);
    std::int64_t age = std::max<std::int64_t>(0, unix_now - k.ack_unix_ms);
    return update(id, now, [&](record& r, std::uint32_t) {
      r.maxconn = k.maxconn;
      r.proxy = k.proxy;
      r.full = false;
      r.draining = k.drained;
      r.reported = k.reported;
      r.last_ack = now - age;
      r.tied = k.kind == kept_kind::native;
      r.online = !r.tied;
    });
  }

 private:
  struct record {
    std::string id;
    endpoint at;
    resolved_address to;
    bool used = false;
    bool routable = false;
    bool draining = false;
    bool expires = false;
    bool online = true;
    int weight = default_weight;
    int maxconn = 0;      // 0: no limit
    bool backup = false;  // in the backup tier
    bool full = false;    // at its maxconn
    proxy_protocol proxy = proxy_protocol::none;
    // Where place() last put it: eligible when last judged, and in the hash table
    // (with which weight), so that the table is rebuilt only when these change.
    bool listed = false;
    bool hashed = false;
    int hashed_weight = 0;
    bool counted_full = false;  // counted in full_
    int active = 0;
    std::uint64_t total = 0;
    std::uint64_t failures = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0;
    std::int64_t last_ack = 0;
    std::int64_t eligible_since = 0;  // when it last became eligible (slow start)
    bool ramping = false;             // in ramping_: its effective weight still grows
    std::uint32_t generation = 0;
    std::string source;  // backends from DNS: the NAME:PORT it came from
    readiness reported = readiness::ready;  // reported by the agent
    backend_health health;
    bool resting = false;        // in resting_: passively out, its trial to be woken
    const char* shown = nullptr;  // the state last noted (shown_state)
    bool tied = false;  // kept online by its agent's connection (native dialect)
  };

  // Changes one backend, then re-judges its eligibility at `now` (a negative
  // `now` leaves eligibility alone).
  template <class Change>
  std::error_code update(std::string_view id, std::int64_t now, Change&& change) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    change(records_[slot], slot);
    if (now >= 0) refresh(slot, now);
    changed();
    return {};
  }
  void changed() {
    if (on_change_) on_change_();
  }

  bool find(std::string_view id, std::uint32_t& slot) const {
    auto it = by_id_.find(std::string(id));
    if (it == by_id_.end()) return false;
    slot = it->second;
    return true;
  }
  // Whether a lease still names the backend it was taken from.
  bool current(const lease& l) const noexcept {
    return l.slot < records_.size() && records_[l.slot].generation == l.generation;
  }
  bool eligible(std::uint32_t slot, std::int64_t now) const noexcept {
    const record& r = records_[slot];
    return r.used && r.routable && r.online && !r.draining && r.reported == readiness::ready &&
           (!r.expires || now - r.last_ack <= host_timeout_ms_) && r.health.usable(now);
  }
  const char* state_of(std::uint32_t slot, std::int64_t now) const noexcept {
    const record& r = records_[slot];
    if (!r.routable) return "no-port";
    if (!r.online) return "offline";
    if (r.expires && now - r.last_ack > host_timeout_ms_) return "expired";
    if (r.reported == readiness::down || r.health.down()) return "down";
    if (r.draining || r.reported == readiness::drain) return "draining";
    if (r.full) return "full";
    return "up";
  }
  // The state its changes are logged by: a full backend is up (fullness is load).
  const char* shown_state(std::uint32_t slot, std::int64_t now) const noexcept {
    const char* s = state_of(slot, now);
    return std::strcmp(s, "full") == 0 ? "up" : s;
  }
  // Notes a change of the shown state, with reason_ (what the last change was) or
  // what the state itself says.
  void note(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    const char* s = shown_state(slot, now);
    if (!r.shown || std::strcmp(s, r.shown) == 0) {
      if (!r.shown) r.shown = s;
      return;
    }
    std::string why = reason_;
    if (std::strcmp(s, "expired") == 0)
      why = "no ack within the host timeout (" + format_duration(duration(host_timeout_ms_)) + ")";
    else if (why.empty())
      why = std::string("was ") + r.shown;
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") " + s + ": " + why);
    r.shown = s;
  }
  // Lets the trials whose back-off is over be picked.
  void wake(std::int64_t now) {
    if (resting_.empty() || now < next_wake_) return;
    next_wake_ = std::numeric_limits<std::int64_t>::max();
    for (std::size_t i = 0; i < resting_.size();) {
      std::uint32_t slot = resting_[i];
      record& r = records_[slot];
      if (!r.used || !r.health.passively_out()) {
        r.resting = false;
        resting_[i] = resting_.back();
        resting_.pop_back();
        continue;
      }
      if (r.health.usable(now) && !r.listed) refresh(slot, now);
      // Its back-off, or (trial going on) a look now and then, in case it stalls.
      next_wake_ = std::min(next_wake_, r.health.retry_at() > now ? r.health.retry_at() : now + 1000);
      ++i;
    }
  }
  void refresh(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    bool was_listed = r.listed;
    r.listed = eligible(slot, now);
    if (r.listed && !was_listed) {  // joins or comes back: its slow start begins
      r.eligible_since = now;
      if (slow_start_ms_ > 0 && !r.ramping) {
        r.ramping = true;
        ramping_.push_back(slot);
      }
    }
    place(slot, now);
    note(slot, now);
  }

  // Slow start, a pure function of now: 1/16 of the weight when the backend becomes
  // eligible, then up by sixteenths (few re-weights, each keeps its pass) to the
  // whole weight after slow_start_ms_. It shapes leastconn, roundrobin and random;
  // hash keeps its table (a consistent mapping does not ramp).
  static constexpr std::int64_t ramp_levels = 16;
  static constexpr std::int64_t ramp_step_ms = 5;  // how often pick() re-weights ramping backends
  int effective_weight(const record& r, std::int64_t now) const noexcept {
    std::int64_t elapsed = now - r.eligible_since;
    if (!r.ramping || slow_start_ms_ <= 0 || elapsed >= slow_start_ms_) return r.weight;
    std::int64_t level = 1 + std::max<std::int64_t>(elapsed, 0) * (ramp_levels - 1) / slow_start_ms_;
    return static_cast<int>(std::max<std::int64_t>(min_weight, r.weight * level / ramp_levels));
  }
  // Re-weights the ramping backends, at most every ramp_step_ms, so a pick stays
  // O(log n) but for the few backends in their slow start.
  void ramp(std::int64_t now) {
    if (ramping_.empty() || (now >= ramp_checked_ && now - ramp_checked_ < ramp_step_ms)) return;
    ramp_checked_ = now;
    for (std::size_t i = 0; i < ramping_.size();) {
      std::uint32_t slot = ramping_[i];
      record& r = records_[slot];
      bool done = now - r.eligible_since >= slow_start_ms_;
      if (done) r.ramping = false;
      place(slot, now);
      if (!done) {
        ++i;
        continue;
      }
      ramping_[i] = ramping_.back();
      ramping_.pop_back();
    }
  }

  // ---- The algorithms. Each tier (primaries, backups) keeps every structure a pick
  // may use, for the backends in it that can take a connection now (eligible when
  // last judged and below their maxconn): the heap of leastconn and roundrobin, the
  // weights of random; and, with hash, the Maglev table of its eligible backends
  // (full ones stay in it: a pick passes over them without a rebuild).
  struct tier {
    selector picks;
    weighted_sampler weights;
    maglev_table table;
    bool table_dirty = false;
    std::uint64_t table_generation = 0;  // of the last job taken
  };
  static algorithm heap_algorithm(algorithm a) noexcept {
    return a == algorithm::roundrobin ? algorithm::roundrobin : algorithm::leastconn;
  }
  std::size_t tried_and_full(const std::vector<lease>& tried) const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < tried.size(); ++i) {
      const lease& l = tried[i];
      bool again = false;  // a lease may be listed twice
      for (std::size_t j = 0; j < i; ++j) again = again || tried[j].slot == l.slot;
      if (!again && current(l) && records_[l.slot].counted_full) ++n;
    }
    return n;
  }
  static bool at_limit(const record& r) noexcept { return r.maxconn > 0 && r.active >= r.maxconn; }

  // Puts a slot where its flags (listed, full, backup) say, in every structure
  // of its tier, and keeps the count of listed backends at their limit.
  // `now` times the slow start; without one, the last time ramp() looked.
  void place(std::uint32_t slot) { place(slot, ramp_checked_); }
  void place(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    tier& t = tiers_[r.backup];
    bool counted = r.listed && r.full;
    if (counted != r.counted_full) {
      r.counted_full = counted;
      if (counted) ++full_;
      else --full_;
    }
    if (r.listed && !r.full) {
      int weight = effective_weight(r, now);
      t.picks.insert(slot, weight, r.active);
      t.weights.set(slot, static_cast<std::uint64_t>(weight));
    } else {
      t.picks.erase(slot);
      t.weights.set(slot, 0);
    }
    if (r.hashed != r.listed || (r.listed && r.hashed_weight != r.weight)) mark_stale(t);
  }

  void mark_stale(tier& t) {
    t.table_dirty = true;
    if (algorithm_ != algorithm::hash || tables_wanted_ || !on_tables_stale_) return;
    tables_wanted_ = true;
    on_tables_stale_();
  }

  // With hash, the Maglev tables are rebuilt whenever their membership or weights
  // changed, once however many changes came in between.
  void rebuild_tables() {
    for (table_job& job : take_table_jobs()) install_table(job.which, job.generation, job.build());
  }

 public:
  // ---- Maglev rebuilds off the per-connection path. A build is O(M log n), about
  // 2 ms for M = 65537, too long for a pick under the registry lock. With a
  // callback set, a change that makes a table stale calls it once (under the lock:
  // it may only post a task); the task takes the jobs under the lock, builds them
  // without it and installs them under it again. Until then picks use the table
  // before the change, passing over the backends that can no longer serve.
  struct table_job {
    int which = 0;  // the tier: 0 primaries, 1 backups
    std::uint64_t generation = 0;
    std::vector<maglev_table::member> members;
    maglev_table build() {
      maglev_table table;
      table.build(std::move(members));
      return table;
    }
  };
  void on_tables_stale(std::function<void()> notify) { on_tables_stale_ = std::move(notify); }
  std::vector<table_job> take_table_jobs() {
    std::vector<table_job> jobs;
    tables_wanted_ = false;
    if (algorithm_ != algorithm::hash) return jobs;
    for (int which = 0; which < 2; ++which) {
      tier& t = tiers_[which];
      if (!t.table_dirty) continue;
      t.table_dirty = false;
      table_job job;
      job.which = which;
      job.generation = ++t.table_generation;
      for (std::uint32_t slot = 0; slot < records_.size(); ++slot) {
        record& r = records_[slot];
        if (r.backup != (which == 1)) continue;
        r.hashed = r.used && r.listed;
        r.hashed_weight = r.weight;
        if (r.hashed)
          job.members.push_back(maglev_table::member{backend_key(r.to), slot, static_cast<std::uint64_t>(r.weight)});
      }
      jobs.push_back(std::move(job));
    }
    return jobs;
  }
  // Installs a built table unless a later job for its tier was taken meanwhile.
  void install_table(int which, std::uint64_t generation, maglev_table table) {
    tier& t = tiers_[which];
    if (generation == t.table_generation) t.table = std::move(table);
  }

 private:
  // A backend for a new connection: from the primaries, else from the backups.
  template <class Tried>
  std::uint32_t choose(std::int64_t now, std::string_view client_key, Tried&& was_tried) {
    std::uint32_t chosen = choose_in(tiers_[0], now, client_key, was_tried);
    if (chosen == selector::npos) chosen = choose_in(tiers_[1], now, client_key, was_tried);
    return chosen;
  }

  template <class Tried>
  std::uint32_t choose_in(tier& t, std::int64_t now, std::string_view client_key, Tried&& was_tried) {
    std::vector<std::uint32_t> expired;  // found ineligible since last judged: placed once the pick is done
    auto judge = [&](std::uint32_t slot) {
      if (!eligible(slot, now)) {
        expired.push_back(slot);
        return selector::verdict::evict;
      }
      return was_tried(slot) ? selector::verdict::skip : selector::verdict::take;
    };
    std::uint32_t chosen = selector::npos;
    if (algorithm_ == algorithm::random) {
      chosen = pick_two(t.weights, random_, judge, [&](std::uint32_t a, std::uint32_t b) {
        const record& x = records_[a];
        const record& y = records_[b];
        return static_cast<std::uint64_t>(x.active) * static_cast<std::uint64_t>(y.weight) <
               static_cast<std::uint64_t>(y.active) * static_cast<std::uint64_t>(x.weight);
      });
    } else if (algorithm_ == algorithm::hash && !client_key.empty()) {
      chosen = choose_hashed(t, client_key, judge);
      if (chosen == selector::npos) chosen = t.picks.pick(judge);  // every preference tried: the least loaded
    } else {
      chosen = t.picks.pick(judge);
    }
    for (std::uint32_t slot : expired) refresh(slot, now);
    return chosen;
  }

  // The client's first preference in the table that can serve, trying at most
  // maglev_table::max_attempts lookups; npos when none could.
  template <class Judge>
  std::uint32_t choose_hashed(tier& t, std::string_view client_key, Judge& judge) {
    for (unsigned attempt = 0; attempt < maglev_table::max_attempts; ++attempt) {
      std::uint32_t slot = t.table.lookup(client_key, attempt);
      if (slot == maglev_table::npos) return slot;
      if (slot >= records_.size() || records_[slot].full || !records_[slot].listed) continue;  // a stale table's
      if (judge(slot) == selector::verdict::take) return slot;
    }
    return selector::npos;
  }

  algorithm algorithm_;
  tier tiers_[2];  // primaries, backups
  std::function<void()> on_tables_stale_;
  bool tables_wanted_ = false;  // on_tables_stale_ was called and its jobs are not taken yet
  std::size_t full_ = 0;  // listed backends at their maxconn
  fast_random random_;
  std::int64_t host_timeout_ms_;
  bool persistent_;
  limits limits_;
  affinity_table affinities_;
  id_generator make_id_;
  std::vector<record> records_;
  std::vector<std::uint32_t> free_slots_;
  std::int64_t slow_start_ms_ = 0;
  std::int64_t ramp_checked_ = 0;          // the last now ramp() re-weighted at
  std::vector<std::uint32_t> ramping_;     // slots in their slow start
  health_policy health_;
  std::vector<std::uint32_t> resting_;     // slots passively out (>>health)
  std::int64_t next_wake_ = std::numeric_limits<std::int64_t>::max();  // when wake() next has work
  std::string reason_;                     // why the change being made happens, for note()
  std::vector<std::string> changes_;       // noted state changes, for take_changes()
  std::unordered_map<std::string, std::uint32_t> by_id_;
  std::function<void()> on_change_;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>discovery  backends from DNS: what a name's new address set changes (sans-IO)
// One name's backends (server::add_backend_name). Each resolution of the name is
// compared with the set before it, and the answer is what the registry must do:
// add a backend for an address that appeared, drain one whose address went, restore
// one whose address came back while it drained, re-weight one whose weight or role
// changed (an SRV record's weight or priority), and, at a sweep, remove the drained ones whose last
// connection has ended. A failed resolution changes nothing: the last good set is
// kept. It holds no OS type and does no I/O; the server applies its changes to the
// registry on an event loop.
struct discovered_address {
  resolved_address to;
  int weight = default_weight;
  bool backup = false;  // an SRV record of more than the lowest priority
};

class discovery {
 public:
  struct change {
    enum class kind { add, drain, restore, reweight, remove };
    kind what = kind::add;
    resolved_address to;
    int weight = default_weight;
    std::string id;  // the backend concerned; empty for add
    bool backup = false;
  };
  struct outcome {
    std::vector<change> changes;
    // Whether the name's state changed between resolving and failing: the one time
    // to log it (the first failure, and the first success after failures).
    bool news = false;
  };

  // A successful resolution: `fresh` is every address the name has now (repeats count once).
  outcome resolved(const std::vector<discovered_address>& fresh) {
    outcome out;
    out.news = state_ == state::failing;
    state_ = state::resolving;
    std::vector<bool> seen(members_.size(), false);
    for (const discovered_address& a : fresh) {
      std::size_t i = find(a.to);
      if (i < seen.size() && seen[i]) continue;  // a repeat
      if (i == members_.size()) {
        members_.push_back(member{a.to, a.weight, std::string(), false, a.backup});
        seen.push_back(true);
        out.changes.push_back(change{change::kind::add, a.to, a.weight, std::string(), a.backup});
        continue;
      }
      seen[i] = true;
      member& m = members_[i];
      if (m.gone) {
        m.gone = false;
        out.changes.push_back(change{change::kind::restore, m.to, m.weight, m.id, m.backup});
      }
      if (m.weight != a.weight || m.backup != a.backup) {
        m.weight = a.weight;
        m.backup = a.backup;
        out.changes.push_back(change{change::kind::reweight, m.to, m.weight, m.id, m.backup});
      }
    }
    for (std::size_t i = 0; i < members_.size(); ++i) {
      member& m = members_[i];
      if (seen[i] || m.gone) continue;
      m.gone = true;
      out.changes.push_back(change{change::kind::drain, m.to, m.weight, m.id, m.backup});
    }
    return out;
  }

  // A failed resolution: the set stays as it is.
  outcome failed() {
    outcome out;
    out.news = state_ != state::failing;
    state_ = state::failing;
    return out;
  }

  // The id of the backend added for `to` (after an add change). An address whose
  // add failed stays unbound and is retried at the next resolution.
  void bind(const resolved_address& to, std::string id) {
    std::size_t i = find(to);
    if (i < members_.size()) members_[i].id = std::move(id);
  }

  // Removes what has finished: a drained member whose backend has no open connection
  // left (a remove change), and silently forgets a member whose backend is unknown
  // (its add failed, or it was removed by other means), so that the next resolution
  // adds it again if the name still has it. `active(id)` is the backend's count of
  // open connections, negative when there is no such backend.
  template <class Active>
  std::vector<change> sweep(Active&& active) {
    std::vector<change> out;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      member& m = members_[i];
      int open = m.id.empty() ? -1 : active(std::string_view(m.id));
      if (open < 0) continue;
      if (m.gone && open == 0) {
        out.push_back(change{change::kind::remove, m.to, m.weight, m.id, m.backup});
        continue;
      }
      if (kept != i) members_[kept] = std::move(m);
      ++kept;
    }
    members_.resize(kept);
    return out;
  }

  bool failing() const noexcept { return state_ == state::failing; }
  // Members that get new connections (not gone), and all of them.
  std::size_t live() const noexcept {
    std::size_t n = 0;
    for (const member& m : members_) n += m.gone ? 0 : 1;
    return n;
  }
  std::size_t size() const noexcept { return members_.size(); }

 private:
  struct member {
    resolved_address to;
    int weight;
    std::string id;
    bool gone;  // no longer in the name's set: drained, removed at a sweep once idle
    bool backup;
  };
  enum class state { unknown, resolving, failing };

  std::size_t find(const resolved_address& to) const noexcept {
    for (std::size_t i = 0; i < members_.size(); ++i)
      if (members_[i].to == to) return i;
    return members_.size();
  }

  std::vector<member> members_;
  state state_ = state::unknown;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>dns  sans-IO DNS messages: SRV queries, their answers, resolv.conf, SRV records to backends
// SRV records (RFC 2782) need a DNS query of their own: getaddrinfo has no SRV,
// and res_query lives in libresolv on most systems (a dependency the header does
// not take). The resolver thread sends these queries over UDP (TCP when the answer
// is truncated) to the configured name servers, or those of /etc/resolv.conf.
// Everything here is bytes in, values out; it is fuzzed (make fuzz).
inline constexpr std::uint16_t dns_type_a = 1;
inline constexpr std::uint16_t dns_type_aaaa = 28;
inline constexpr std::uint16_t dns_type_srv = 33;
inline constexpr std::uint16_t dns_class_in = 1;
inline constexpr std::size_t dns_max_name = 253;  // in text, without the final dot

struct srv_record {
  std::uint16_t priority = 0;
  std::uint16_t weight = 0;
  std::uint16_t port = 0;
  std::string target;  // canonical (see dns_canonical); "" for "." (no service here)
};
struct dns_address_record {
  std::string name;  // canonical
  resolved_address address;
};
struct dns_answer {
  int rcode = 0;           // 0 no error, 3 no such name, …
  bool truncated = false;  // the TC bit: ask again over TCP
  std::vector<srv_record> services;
  std::vector<dns_address_record> addresses;  // A and AAAA records, of any section
};

// Names compare without regard to case or a final dot.
inline std::string dns_canonical(std::string_view name) {
  std::string out(name);
  if (!out.empty() && out.back() == '.') out.pop_back();
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// Whether `name` can be queried: dot-separated labels of 1 to 63 printable bytes
// (no spaces), 253 bytes at most.
inline bool dns_valid_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > dns_max_name) return false;
  std::size_t label = 0;
  for (char ch : name) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (c <= ' ' || c >= 0x7f || ++label > 63) return false;
  }
  return label > 0;
}

// An SRV name is how add_backend_name tells a service from a host: its first
// label starts with an underscore (_service._tcp.example.com), and it has no port.
inline bool is_srv_name(std::string_view text) {
  return text.size() > 1 && text[0] == '_' && text.find(':') == std::string_view::npos && dns_valid_name(text);
}

// A standard query with recursion desired. False for a name dns_valid_name refuses.
inline bool dns_encode_query(std::uint16_t id, std::string_view name, std::uint16_t type, std::string& out) {
  if (!dns_valid_name(name)) return false;
  if (name.back() == '.') name.remove_suffix(1);
  auto put16 = [&](std::uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xff));
  };
  out.clear();
  put16(id);
  put16(0x0100);  // RD
  put16(1);       // one question
  put16(0);
  put16(0);
  put16(0);
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) dot = name.size();
    out.push_back(static_cast<char>(dot - start));
    out.append(name.data() + start, dot - start);
    start = dot + 1;
  }
  out.push_back('\0');
  put16(type);
  put16(dns_class_in);
  return true;
}

// Reads the (possibly compressed) name at `at` and moves `at` past it. Pointers
// must point backwards, so a message cannot make it loop.
inline bool dns_read_name(std::string_view m, std::size_t& at, std::string& out) {
  out.clear();
  std::size_t pos = at;
  std::size_t limit = at;  // a pointer must point before this
  bool jumped = false;
  for (;;) {
    if (pos >= m.size()) return false;
    auto len = static_cast<unsigned char>(m[pos]);
    if ((len & 0xc0) == 0xc0) {
      if (pos + 1 >= m.size()) return false;
      std::size_t target = (static_cast<std::size_t>(len & 0x3f) << 8) | static_cast<unsigned char>(m[pos + 1]);
      if (target >= limit) return false;
      if (!jumped) at = pos + 2;
      jumped = true;
      limit = target;
      pos = target;
      continue;
    }
    if (len & 0xc0) return false;  // the reserved label types
    if (len == 0) {
      if (!jumped) at = pos + 1;
      break;
    }
    if (pos + 1 + len > m.size()) return false;
    if (!out.empty()) out.push_back('.');
    for (std::size_t i = 0; i < len; ++i) {
      char c = m[pos + 1 + i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c == '.' || static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7f) return false;
      out.push_back(c);
    }
    if (out.size() > dns_max_name) return false;
    pos += 1 + len;
  }
  return true;
}

// Decodes the answer to the query (id, name, type) dns_encode_query made: its SRV
// records for `name` and every A/AAAA record it carries. errc::resolve_failed for a
// message that is not that answer or does not parse; a DNS error is in rcode.
inline std::error_code dns_decode_answer(std::string_view m, std::uint16_t id, std::string_view name,
                                         std::uint16_t type, dns_answer& out) {
  out = dns_answer{};
  const std::error_code bad = make_error_code(errc::resolve_failed);
  auto get16 = [&](std::size_t at) {
    return static_cast<std::uint16_t>((static_cast<unsigned char>(m[at]) << 8) | static_cast<unsigned char>(m[at + 1]));
  };
  if (m.size() < 12 || get16(0) != id) return bad;
  std::uint16_t flags = get16(2);
  if (!(flags & 0x8000) || (flags & 0x7800)) return bad;  // not a response, or not to a standard query
  out.truncated = (flags & 0x0200) != 0;
  out.rcode = flags & 0x000f;
  std::size_t questions = get16(4);
  std::size_t records = std::size_t{get16(6)} + get16(8) + get16(10);
  std::size_t at = 12;
  std::string owner;
  std::string want = dns_canonical(name);
  if (questions != 1) return bad;
  if (!dns_read_name(m, at, owner) || owner != want || at + 4 > m.size()) return bad;
  if (get16(at) != type || get16(at + 2) != dns_class_in) return bad;
  at += 4;
  for (std::size_t i = 0; i < records; ++i) {
    if (!dns_read_name(m, at, owner) || at + 10 > m.size()) return out.truncated ? std::error_code{} : bad;
    std::uint16_t rtype = get16(at);
    std::uint16_t rclass = get16(at + 2);
    std::size_t length = get16(at + 8);
    at += 10;
    if (at + length > m.size()) return out.truncated ? std::error_code{} : bad;
    std::size_t end = at + length;
    if (rclass == dns_class_in) {
      if (rtype == dns_type_srv && owner == want && length >= 7) {
        srv_record s;
        s.priority = get16(at);
        s.weight = get16(at + 2);
        s.port = get16(at + 4);
        std::size_t t = at + 6;
        if (!dns_read_name(m, t, s.target) || t != end) return bad;
        out.services.push_back(std::move(s));
      } else if (rtype == dns_type_a && length == 4) {
        out.addresses.push_back(dns_address_record{owner, {}});
        resolved_address& a = out.addresses.back().address;
        a.family = ip_family::v4;
        std::memcpy(a.bytes, m.data() + at, 4);
      } else if (rtype == dns_type_aaaa && length == 16) {
        out.addresses.push_back(dns_address_record{owner, {}});
        resolved_address& a = out.addresses.back().address;
        a.family = ip_family::v6;
        std::memcpy(a.bytes, m.data() + at, 16);
      }
    }
    at = end;
  }
  return {};
}

// The name servers of a resolv.conf: its `nameserver ADDRESS` lines, port 53.
inline std::vector<endpoint> parse_resolv_conf(std::string_view text) {
  std::vector<endpoint> out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    auto word = [&](std::string_view& rest) {
      std::size_t b = rest.find_first_not_of(" \t\r");
      if (b == std::string_view::npos) return std::string_view();
      std::size_t e = rest.find_first_of(" \t\r", b);
      if (e == std::string_view::npos) e = rest.size();
      std::string_view w = rest.substr(b, e - b);
      rest.remove_prefix(e);
      return w;
    };
    if (word(line) != "nameserver") continue;
    std::string_view host = word(line);
    std::size_t percent = host.find('%');  // a link-local scope: not ours to follow
    if (!host.empty() && percent == std::string_view::npos) out.push_back(endpoint{std::string(host), dns_port});
  }
  return out;
}

// What an SRV answer makes of a name's backends: every address of every target,
// at the record's port. The records of the lowest priority are the primaries and
// the others backups (a client tries the lowest first, RFC 2782); a record's
// weight is the backend's (0 counts as the least weight, and when every record
// of the answer says 0 each gets the default). A target the answer carries no
// address for is looked up by `resolve_target` (getaddrinfo); "." and port 0
// are not a service.
template <class Resolve>
std::error_code srv_backends(const dns_answer& answer, Resolve&& resolve_target, std::vector<discovered_address>& out) {
  out.clear();
  bool any_weight = false;
  std::uint16_t lowest = 0xffff;
  for (const srv_record& s : answer.services) {
    if (s.target.empty() || s.port == 0) continue;
    any_weight = any_weight || s.weight > 0;
    lowest = std::min(lowest, s.priority);
  }
  for (const srv_record& s : answer.services) {
    if (s.target.empty() || s.port == 0) continue;
    int weight = any_weight ? std::max<int>(s.weight, min_weight) : default_weight;
    std::vector<resolved_address> hosts;
    for (const dns_address_record& a : answer.addresses)
      if (a.name == s.target) hosts.push_back(a.address);
    if (hosts.empty()) resolve_target(endpoint{s.target, s.port}, hosts);
    for (const resolved_address& h : hosts)
      out.push_back(discovered_address{h.with_port(s.port), weight, s.priority != lowest});
  }
  return out.empty() ? make_error_code(errc::resolve_failed) : std::error_code{};
}

}  // namespace detail
}  // namespace harmony

#include <array>
#include <cstdint>

namespace harmony {
namespace detail {

// >>crypto  sans-IO SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104), constant-time compare
// What the admin handshake needs and nothing more: no dependency, no OS call.
// Checked against the FIPS 180 examples and the RFC 4231 vectors (tests/unit.cpp).
class sha256 {
 public:
  static constexpr std::size_t digest_size = 32;
  static constexpr std::size_t block_size = 64;
  using digest = std::array<std::uint8_t, digest_size>;

  sha256() noexcept { reset(); }
  void reset() noexcept {
    // FIPS 180-4 5.3.3: the first 32 bits of the fractional parts of the square
    // roots of the first eight primes.
    static constexpr std::uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (int i = 0; i < 8; ++i) h_[i] = initial[i];
    length_ = 0;
    used_ = 0;
  }
  void update(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const std::uint8_t*>(data);
    length_ += static_cast<std::uint64_t>(n);
    while (n > 0) {
      std::size_t take = std::min(n, block_size - used_);
      std::memcpy(block_ + used_, p, take);
      used_ += take;
      p += take;
      n -= take;
      if (used_ == block_size) {
        compress(block_);
        used_ = 0;
      }
    }
  }
  void update(std::string_view text) noexcept { update(text.data(), text.size()); }
  // Pads (5.1.1: a 1 bit, zeros, the 64-bit bit length) and gives the hash; reset() to reuse.
  digest finish() noexcept {
    std::uint64_t bits = length_ * 8;
    static constexpr std::uint8_t one = 0x80;
    static constexpr std::uint8_t zeros[block_size] = {};
    update(&one, 1);
    std::size_t pad = used_ <= 56 ? 56 - used_ : block_size + 56 - used_;
    update(zeros, pad);
    std::uint8_t tail[8];
    for (int i = 0; i < 8; ++i) tail[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
    update(tail, 8);
    digest out{};
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[static_cast<std::size_t>(4 * i + j)] = static_cast<std::uint8_t>(h_[i] >> (24 - 8 * j));
    return out;
  }
  static digest of(std::string_view text) noexcept {
    sha256 h;
    h.update(text);
    return h.finish();
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) noexcept { return (x >> n) | (x << (32 - n)); }

  // 6.2.2: one 512-bit block.
  void compress(const std::uint8_t* b) noexcept {
    // 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes.
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    };
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = static_cast<std::uint32_t>(b[4 * t]) << 24 | static_cast<std::uint32_t>(b[4 * t + 1]) << 16 |
             static_cast<std::uint32_t>(b[4 * t + 2]) << 8 | static_cast<std::uint32_t>(b[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int t = 0; t < 64; ++t) {
      std::uint32_t big1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      std::uint32_t choose = (e & f) ^ (~e & g);
      std::uint32_t t1 = h + big1 + choose + k[t] + w[t];
      std::uint32_t big0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      std::uint32_t majority = (a & bb) ^ (a & c) ^ (bb & c);
      std::uint32_t t2 = big0 + majority;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = bb;
      bb = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += bb;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  std::uint32_t h_[8];
  std::uint64_t length_;  // bytes so far
  std::uint8_t block_[block_size];
  std::size_t used_;  // bytes of block_ filled
};

// RFC 2104: H((K' ^ opad) || H((K' ^ ipad) || message)), K' the key, hashed first
// when longer than a block, padded with zeros to a block.
inline sha256::digest hmac_sha256(std::string_view key, std::string_view message) noexcept {
  std::uint8_t k[sha256::block_size] = {};
  if (key.size() > sha256::block_size) {
    sha256::digest d = sha256::of(key);
    std::memcpy(k, d.data(), d.size());
  } else if (!key.empty()) {
    std::memcpy(k, key.data(), key.size());
  }
  std::uint8_t pad[sha256::block_size];
  sha256 inner;
  for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x36);
  inner.update(pad, sizeof pad);
  inner.update(message);
  sha256::digest inner_hash = inner.finish();
  sha256 outer;
  for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x5c);
  outer.update(pad, sizeof pad);
  outer.update(inner_hash.data(), inner_hash.size());
  return outer.finish();
}

// Lowercase hex of any bytes.
inline std::string to_hex(const std::uint8_t* bytes, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}
inline std::string to_hex(const sha256::digest& d) { return to_hex(d.data(), d.size()); }

// Equal strings, in a time that depends on their lengths only, never on where they
// first differ: a proof is checked without telling an attacker how much was right.
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  unsigned difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    difference |= static_cast<unsigned>(static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]));
  // Read through a volatile so the compiler cannot turn the loop into an early exit.
  volatile unsigned result = difference;
  return result == 0;
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>stats-render  sans-IO stats: HTTP request lines, Prometheus text, JSON, the status page
// What the stats port shows, taken at one moment.
struct stats_snapshot {
  server_stats totals;
  std::vector<backend_info> backends;
  std::int64_t uptime_ms = 0;
  long open_descriptors = -1;  // -1 where the platform cannot count them
  std::string algorithm;
  std::string version;
};

// The start of an HTTP/1.x request: its method and path, once the header is in.
struct http_request {
  enum class status { incomplete, done, bad };
  status result = status::incomplete;
  std::string method;
  std::string path;  // without the query string
};
inline constexpr std::size_t http_max_header = 8192;

inline http_request parse_http_request(std::string_view bytes) {
  http_request r;
  std::size_t end = bytes.find("\r\n\r\n");
  if (end == std::string_view::npos) end = bytes.find("\n\n");
  if (end == std::string_view::npos) {
    if (bytes.size() > http_max_header) r.result = http_request::status::bad;
    return r;
  }
  if (end > http_max_header) {
    r.result = http_request::status::bad;
    return r;
  }
  std::string_view line = bytes.substr(0, bytes.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::size_t a = line.find(' ');
  std::size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  r.result = http_request::status::bad;
  if (b == std::string_view::npos || line.substr(b + 1, 7) != "HTTP/1.") return r;
  std::string_view target = line.substr(a + 1, b - a - 1);
  if (target.empty() || target[0] != '/') return r;
  r.method = std::string(line.substr(0, a));
  r.path = std::string(target.substr(0, target.find('?')));
  r.result = http_request::status::done;
  return r;
}

inline std::string http_response(int status, std::string_view type, std::string_view body, bool head = false) {
  const char* reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed" : "Bad Request";
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + std::string(type) +
                    "\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
  if (!head) out.append(body.data(), body.size());
  return out;
}

// A label value in the Prometheus text format: backslash, quote and newline escaped.
inline std::string prometheus_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

// The Prometheus text exposition format (version 0.0.4): a HELP and a TYPE line
// before each family's samples.
inline std::string render_prometheus(const stats_snapshot& s) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto sample = [&](const char* name, const std::string& labels, double value) {
    char number[64];
    std::snprintf(number, sizeof number, "%.17g", value);
    out += name;
    if (!labels.empty()) out += "{" + labels + "}";
    out += " ";
    out += number;
    out += "\n";
  };
  auto scalar = [&](const char* name, const char* type, const char* help, double value) {
    family(name, type, help);
    sample(name, "", value);
  };
  scalar("harmony_connections_accepted_total", "counter", "Client connections accepted.", double(s.totals.accepted));
  scalar("harmony_connections_active", "gauge", "Client connections open now.", double(s.totals.active));
  scalar("harmony_connections_queued", "gauge", "Client connections waiting in the wait queue: one queue for all backends, for a "
         "concurrency slot or for room on any backend at its maxconn.",
         double(s.totals.queued));
  scalar("harmony_connections_unavailable_total", "counter",
         "Client connections nobody could serve (no backend, attempts exhausted, queue full or timed out).",
         double(s.totals.unavailable));
  scalar("harmony_backend_connect_failures_total", "counter", "Failed backend connection attempts, all backends.",
         double(s.totals.connect_failures));
  scalar("harmony_connections_refused_total", "counter",
         "Client connections closed at once: their address had max-conns-per-client open.", double(s.totals.refused));
  scalar("harmony_bad_proxy_headers_total", "counter",
         "Client connections reset for lack of a valid PROXY header (accept-proxy).", double(s.totals.bad_proxy_headers));
  scalar("harmony_bytes_in_total", "counter", "Bytes relayed from clients to backends.", double(s.totals.bytes_in));
  scalar("harmony_bytes_out_total", "counter", "Bytes relayed from backends to clients.", double(s.totals.bytes_out));
  scalar("harmony_bytes_spliced_total", "counter", "Of the bytes relayed, those moved inside the kernel (splice).",
         double(s.totals.bytes_spliced));
  scalar("harmony_backends", "gauge", "Backends known (registered, static or from DNS).", double(s.backends.size()));
  scalar("harmony_uptime_seconds", "gauge", "Seconds since the balancer started.", double(s.uptime_ms) / 1000.0);
  if (s.open_descriptors >= 0)
    scalar("process_open_fds", "gauge", "Open file descriptors of the process.", double(s.open_descriptors));
  auto labels = [](const backend_info& b) {
    return "backend=\"" + prometheus_label(b.id) + "\",address=\"" + prometheus_label(b.address.to_string()) + "\"";
  };
  struct per_backend {
    const char* name;
    const char* type;
    const char* help;
    double (*value)(const backend_info&);
  };
  static const per_backend rows[] = {
      {"harmony_backend_up", "gauge", "1 when the backend would receive a new connection now.",
       [](const backend_info& b) { return b.eligible ? 1.0 : 0.0; }},
      {"harmony_backend_weight", "gauge", "The backend's weight.", [](const backend_info& b) { return double(b.weight); }},
      {"harmony_backend_maxconn", "gauge", "The backend's connection limit (0: none).",
       [](const backend_info& b) { return double(b.maxconn); }},
      {"harmony_backend_active_connections", "gauge", "Connections to the backend open now.",
       [](const backend_info& b) { return double(b.active); }},
      {"harmony_backend_connections_total", "counter", "Connections sent to the backend.",
       [](const backend_info& b) { return double(b.total); }},
      {"harmony_backend_failures_total", "counter", "Failed connection attempts to the backend.",
       [](const backend_info& b) { return double(b.failures); }},
      {"harmony_backend_bytes_in_total", "counter",
       "Bytes relayed from clients to the backend, counted as each connection ends.",
       [](const backend_info& b) { return double(b.bytes_in); }},
      {"harmony_backend_bytes_out_total", "counter",
       "Bytes relayed from the backend to clients, counted as each connection ends.",
       [](const backend_info& b) { return double(b.bytes_out); }},
  };
  for (const per_backend& row : rows) {
    family(row.name, row.type, row.help);
    for (const backend_info& b : s.backends) sample(row.name, labels(b), row.value(b));
  }
  family("harmony_backend_info", "gauge", "Always 1: the backend's state, role and source as labels.");
  for (const backend_info& b : s.backends)
    sample("harmony_backend_info",
           labels(b) + ",state=\"" + prometheus_label(b.state) + "\",backup=\"" + (b.backup ? "yes" : "no") +
               "\",source=\"" + prometheus_label(b.source) + "\",proxy=\"" + to_string(b.proxy) + "\"",
           1.0);
  return out;
}

inline std::string json_string(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", u);
      out += esc;
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

inline std::string render_json(const stats_snapshot& s) {
  const server_stats& t = s.totals;
  std::string out = "{\"version\":" + json_string(s.version) + ",\"algorithm\":" + json_string(s.algorithm) +
                    ",\"uptime_seconds\":" + std::to_string(s.uptime_ms / 1000) +
                    ",\"open_descriptors\":" + std::to_string(s.open_descriptors) +
                    ",\"accepted\":" + std::to_string(t.accepted) + ",\"active\":" + std::to_string(t.active) +
                    ",\"queued\":" + std::to_string(t.queued) + ",\"unavailable\":" + std::to_string(t.unavailable) +
                    ",\"connect_failures\":" + std::to_string(t.connect_failures) +
                    ",\"bytes_in\":" + std::to_string(t.bytes_in) + ",\"bytes_out\":" + std::to_string(t.bytes_out) +
                    ",\"refused\":" + std::to_string(t.refused) +
                    ",\"bad_proxy_headers\":" + std::to_string(t.bad_proxy_headers) + ",\"backends\":[";
  for (std::size_t i = 0; i < s.backends.size(); ++i) {
    const backend_info& b = s.backends[i];
    if (i) out += ",";
    out += "{\"id\":" + json_string(b.id) + ",\"address\":" + json_string(b.address.to_string()) +
           ",\"state\":" + json_string(b.state) + ",\"weight\":" + std::to_string(b.weight) +
           ",\"maxconn\":" + std::to_string(b.maxconn) + ",\"backup\":" + (b.backup ? "true" : "false") +
           ",\"active\":" + std::to_string(b.active) + ",\"total\":" + std::to_string(b.total) +
           ",\"failures\":" + std::to_string(b.failures) + ",\"bytes_in\":" + std::to_string(b.bytes_in) +
           ",\"bytes_out\":" + std::to_string(b.bytes_out) + ",\"proxy\":" + json_string(to_string(b.proxy)) +
           ",\"source\":" + json_string(b.source) + "}";
  }
  return out + "]}";
}

inline std::string html_text(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out.push_back(c);
  }
  return out;
}

// The status page: self-contained (no external asset), rendered with the data
// of the moment, then refreshed in place from /status.json every second.
inline std::string render_status_page(const stats_snapshot& s) {
  std::string rows;
  for (const backend_info& b : s.backends)
    rows += "<tr><td>" + html_text(b.id.substr(0, 8)) + "</td><td>" + html_text(b.address.to_string()) +
            "</td><td class=\"s-" + html_text(b.state) + "\">" + html_text(b.state) + "</td><td>" +
            std::to_string(b.weight) + "</td><td>" + std::to_string(b.active) + "</td><td>" +
            std::to_string(b.total) + "</td><td>" + std::to_string(b.failures) + "</td><td>" +
            std::to_string(b.bytes_in) + "</td><td>" + std::to_string(b.bytes_out) + "</td></tr>";
  std::string page = R"(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Harmony</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}.sub{color:#667;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border:1px solid #dde;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde;border-radius:8px;min-width:640px}
th,td{padding:6px 12px;text-align:right;border-bottom:1px solid #eef}th{background:#eef1f6}
td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
.s-up{color:#0a7d32;font-weight:600}.s-down,.s-expired,.s-offline{color:#b3261e;font-weight:600}
.s-draining,.s-full,.s-no-port{color:#9a6700;font-weight:600}
</style></head><body>
<h1>Harmony</h1><div class="sub"><span id="algorithm">@ALGORITHM@</span> &middot; version @VERSION@ &middot;
up <span id="uptime">@UPTIME@</span> s &middot; updated <span id="updated">at load</span></div>
<div class="cards">
<div class="card">active<b id="active">@ACTIVE@</b></div>
<div class="card">accepted<b id="accepted">@ACCEPTED@</b></div>
<div class="card">queued<b id="queued">@QUEUED@</b></div>
<div class="card">unavailable<b id="unavailable">@UNAVAILABLE@</b></div>
<div class="card">backends<b id="count">@COUNT@</b></div>
</div>
<table><thead><tr><th>id</th><th>address</th><th>state</th><th>weight</th><th>active</th><th>total</th><th>failures</th><th>bytes in</th><th>bytes out</th></tr></thead>
<tbody id="backends">@ROWS@</tbody></table>
<script>
function esc(t){return String(t).replace(/[&<>"]/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
function refresh(){
  fetch('status.json',{cache:'no-store'}).then(function(r){return r.json();}).then(function(s){
    ['active','accepted','queued','unavailable'].forEach(function(k){document.getElementById(k).textContent=s[k];});
    document.getElementById('uptime').textContent=s.uptime_seconds;
    document.getElementById('count').textContent=s.backends.length;
    document.getElementById('backends').innerHTML=s.backends.map(function(b){
      return '<tr><td>'+esc(b.id.slice(0,8))+'</td><td>'+esc(b.address)+'</td><td class="s-'+esc(b.state)+'">'+esc(b.state)+
        '</td><td>'+b.weight+'</td><td>'+b.active+'</td><td>'+b.total+'</td><td>'+b.failures+'</td><td>'+b.bytes_in+'</td><td>'+b.bytes_out+'</td></tr>';}).join('');
    document.getElementById('updated').textContent=new Date().toLocaleTimeString();
  }).catch(function(){document.getElementById('updated').textContent='unreachable';});
}
refresh();setInterval(refresh,1000);
</script></body></html>
)";
  auto put = [&](std::string_view key, const std::string& value) {
    std::size_t at = page.find(key);
    if (at != std::string::npos) page.replace(at, key.size(), value);
  };
  put("@ALGORITHM@", html_text(s.algorithm));
  put("@VERSION@", html_text(s.version));
  put("@UPTIME@", std::to_string(s.uptime_ms / 1000));
  put("@ACTIVE@", std::to_string(s.totals.active));
  put("@ACCEPTED@", std::to_string(s.totals.accepted));
  put("@QUEUED@", std::to_string(s.totals.queued));
  put("@UNAVAILABLE@", std::to_string(s.totals.unavailable));
  put("@COUNT@", std::to_string(s.backends.size()));
  put("@ROWS@", rows);
  return page;
}

// The answer to one request: / the page, /metrics, /status.json; GET and HEAD only.
inline std::string stats_answer(const http_request& r, const stats_snapshot& s) {
  if (r.result != http_request::status::done) return http_response(400, "text/plain", "bad request\n");
  bool head = r.method == "HEAD";
  if (r.method != "GET" && !head) return http_response(405, "text/plain", "GET or HEAD\n");
  if (r.path == "/metrics") return http_response(200, "text/plain; version=0.0.4; charset=utf-8", render_prometheus(s), head);
  if (r.path == "/status.json") return http_response(200, "application/json", render_json(s), head);
  if (r.path == "/" || r.path == "/index.html")
    return http_response(200, "text/html; charset=utf-8", render_status_page(s), head);
  return http_response(404, "text/plain", "not found: /, /metrics, /status.json\n", head);
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>commands  sans-IO admin command handling, both dialects: bytes in, reply and effects out
// What an admin connection means, apart from moving its bytes. admin_protocol
// holds one connection's protocol state (dialect, parsers, the backend it speaks
// for, whether it is an agent and its heartbeat, who the peer is) and turns the
// bytes read into the bytes to write plus a few effects for the I/O layer
// (>>admin) to apply. It changes the registry itself, under its lock, and
// reaches the rest of the balancer only through admin_services.

// What commands need of the balancer beyond the registry. The server implements
// it; tests implement it with plain values.
class admin_services {
 public:
  virtual server_stats stats() = 0;  // `stats`
  virtual int concurrency() = 0;     // `stats`, `concurrency`
  // Resolves `register host=H` (may block: it runs on the admin loop, as before).
  virtual std::error_code resolve(const endpoint& at, resolved_address& out) = 0;
  // `add HOST:PORT [weight=W]`: a static backend, as server::add_backend.
  virtual std::error_code add_static(std::string_view address, int weight, std::string* id_out) = 0;
  // Fills `out` with unpredictable bytes (the nonce of `hello` when a secret is set).
  virtual bool random(void* out, std::size_t n) { return random_bytes(out, n); }

 protected:
  ~admin_services() = default;
};

// What a command does beyond its reply; the I/O layer applies these in order,
// after queueing the reply.
struct admin_effect {
  enum class kind {
    end,              // end the connection, after the reply is sent when `graceful`; `why` is logged
    bind_agent,       // this connection is now the live connection of agent `id`; `previous`,
                      // when not empty, is the agent it spoke for before
    unbind_agent,     // agent `id` deregistered itself: forget its connection
    set_concurrency,  // apply `limit` as the concurrency limit
  };
  kind what = kind::end;
  std::string id;
  std::string previous;
  int limit = 0;
  bool graceful = false;
  const char* why = "";
};

struct admin_result {
  // The replies, in order, one write each: one per message answered, as the
  // balancer always wrote them (a harmony.js agent reads what it gets as it comes).
  std::vector<std::string> replies;
  std::vector<admin_effect> effects;  // in order, after the replies

  // All the reply bytes as one string.
  std::string text() const {
    std::string all;
    for (const std::string& r : replies) all += r;
    return all;
  }
};

// Everything a command reads or changes besides the connection's own state.
struct admin_context {
  locked<registry>& backends;
  admin_services& services;
  const logger& log;
  std::int64_t now;
};

// The admin handshake of a balancer with a secret (docs/admin-protocol.md): `hello`
// answers with a fresh nonce (32 bytes of the OS CSPRNG, 64 hex digits), the peer
// answers `auth PROOF`, PROOF being this in hex. The context string ties a proof to
// this protocol and its purpose; the nonce ties it to one connection and one try.
inline std::string admin_auth_proof(std::string_view secret, std::string_view nonce) {
  std::string message = "harmony/1 auth ";
  message.append(nonce.data(), nonce.size());
  return to_hex(hmac_sha256(secret, message));
}

// Who may say what on one native connection, apart from parsing: with a secret, only
// the handshake (and help, quit) before `auth` succeeds; an agent's connection (one
// that registered its backend) changes only that backend.
enum class admin_access { allowed, needs_auth, agent_forbidden };
inline admin_access admin_permission(std::string_view verb, bool authenticated, bool agent) noexcept {
  bool handshake = verb == "hello" || verb == "auth" || verb == "help" || verb == "quit" || verb == "bye";
  if (!authenticated && !handshake) return admin_access::needs_auth;
  // The operator commands that change the balancer or another backend.
  bool steers = verb == "add" || verb == "remove" || verb == "set-weight" || verb == "drain" || verb == "undrain" ||
                verb == "concurrency";
  if (agent && steers) return admin_access::agent_forbidden;
  return admin_access::allowed;
}

class admin_protocol {
 public:
  struct config {
    bool refuse_legacy = false;  // a secret is set and the legacy dialect is not allowed
    std::size_t max_line = default_max_admin_line;  // server_options::max_admin_line
    std::int64_t host_timeout_ms = 0;  // an agent whose heartbeat is longer is told; 0: not checked
    std::string secret;          // server_options::admin_secret; empty: no handshake
  };

  // `peer`: the address the connection comes from; `peer_host`: its host as text.
  admin_protocol(resolved_address peer, std::string peer_host, config c)
      : config_(std::move(c)),
        peer_(peer),
        peer_host_(std::move(peer_host)),
        lines_(config_.max_line),
        authenticated_(config_.secret.empty()) {}
  admin_protocol(resolved_address peer, std::string peer_host) : admin_protocol(peer, std::move(peer_host), config{}) {}

  // Bytes read from the connection: tells the dialect from the first bytes, splits
  // them into messages or lines and answers each. After an `end` effect the rest
  // of the input, now and later, is ignored.
  admin_result feed(std::string_view bytes, admin_context& ctx) {
    admin_result out;
    if (ended_) return out;
    std::string held;
    if (dialect_ == dialect::undecided) {
      first_bytes_.append(bytes.data(), bytes.size());
      dialect_ = detect_dialect(first_bytes_);
      if (dialect_ == dialect::undecided) {
        if (first_bytes_.size() < 16) return out;
        dialect_ = dialect::native;
      }
      held.swap(first_bytes_);
      bytes = held;
      if (dialect_ == dialect::legacy && config_.refuse_legacy) {
        ctx.log(log_level::warn, "legacy agent from %s refused: a secret is set and it is not in allow_legacy",
                peer_name().c_str());
        // Not a harmony.js reply (there is none for this): a line for whoever looks at the bytes.
        append(out, "ERR:the legacy dialect is refused here (the admin port needs a secret):");
        end(out, "legacy dialect refused", true);
        return out;
      }
    }
    if (dialect_ == dialect::legacy) {
      bool ok = legacy_.feed(bytes, [&](std::string_view command, std::string_view argument) {
        if (!ended_) legacy_message(command, argument, ctx, out);
      });
      if (!ok && !ended_) {
        if (legacy_.too_long()) {
          // The legacy dialect has no error reply: the log says why, the close ends it.
          ctx.log(log_level::warn, "legacy message from %s refused: a token is longer than %zu bytes; closing",
                  peer_name().c_str(), legacy_parser::max_token);
          end(out, "token too long", false);
        } else {
          ctx.log(log_level::warn, "malformed legacy message from %s", peer_name().c_str());
          end(out, "malformed legacy message", false);
        }
      }
      return out;
    }
    bool ok = lines_.feed(bytes, [&](std::string_view line) {
      if (!ended_) native_line(line, ctx, out);
    });
    if (!ok && !ended_) {
      ctx.log(log_level::warn, "admin line from %s refused: longer than %zu bytes; closing", peer_name().c_str(),
              config_.max_line);
      error(out, "line-too-long", "lines are limited to " + std::to_string(config_.max_line) + " bytes");
      end(out, "line too long", true);
    }
    return out;
  }

  // One harmony.js message. Every reply but BID and NID echoes the request byte
  // for byte: the agent matches replies as text.
  void legacy_message(std::string_view command, std::string_view argument, admin_context& ctx, admin_result& out) {
    std::string echo;
    echo.reserve(command.size() + argument.size() + 2);
    echo.append(command.data(), command.size()).append(":").append(argument.data(), argument.size()).append(":");
    if (command == "BYE") return end(out, "BYE", true);
    if (command == "NID") {
      // The backend lives at this connection's peer address; SPORT gives its port.
      endpoint at{peer_host_, 0};
      std::string id;
      if (auto e = ctx.backends.lock()->add(at, &peer_, default_weight, true, &id, ctx.now)) {
        ctx.log(log_level::warn, "legacy registration from %s refused: %s", at.host.c_str(), e.message().c_str());
        return end(out, "registration refused", false);
      }
      bound_id_ = id;
      ctx.log(log_level::debug, "backend %s registered from %s (legacy)", id.c_str(), at.host.c_str());
      return append(out, "NID:" + id + ":");
    }
    if (command == "ID") {
      std::string id(argument);
      // harmony.js's close() sends CLOSE then ID for the same id on one connection
      // and expects both echoed.
      if (id == closed_id_) return append(out, echo);
      if (!ctx.backends.lock()->known(id)) return append(out, "BID:" + id + ":");
      bound_id_ = id;
      return append(out, echo);
    }
    if (command == "BAL") {
      if (!bound_id_.empty()) ctx.backends.lock()->set_weight(bound_id_, legacy_weight(argument));
      return append(out, echo);
    }
    if (command == "SPORT") {
      std::uint64_t port = 0;
      endpoint at;
      if (!bound_id_.empty() && parse_uint(argument, 65535, port)) {
        auto r = ctx.backends.lock();
        if (r->address_of(bound_id_, at)) {
          at.port = static_cast<std::uint16_t>(port);
          r->set_address(bound_id_, at, peer_.with_port(at.port), ctx.now);
          r->ack(bound_id_, ctx.now);
        }
      }
      return append(out, echo);
    }
    if (command == "ACK") {
      std::int64_t silent = -1, limit = 0;
      {
        auto r = ctx.backends.lock();
        silent = r->silent_for(argument, ctx.now);
        limit = r->host_timeout_ms();
        r->ack(argument, ctx.now);  // an unknown id is answered all the same
      }
      // The legacy dialect cannot tell the agent; the log says why the backend flaps.
      if (silent > limit)
        ctx.log(log_level::warn,
                "backend %.*s acked %s after its last ack, longer than the host timeout %s: it expires between acks "
                "(its agent's ack interval must be at most half the host timeout)",
                static_cast<int>(argument.size()), argument.data(), format_duration(duration(silent)).c_str(),
                format_duration(duration(limit)).c_str());
      return append(out, echo);
    }
    if (command == "CLOSE") {
      if (!ctx.backends.lock()->remove(argument, "its agent closed it")) {
        ctx.log(log_level::debug, "backend %.*s closed", static_cast<int>(argument.size()), argument.data());
        closed_id_.assign(argument.data(), argument.size());
        if (bound_id_ == closed_id_) bound_id_.clear();
      }
      return append(out, echo);
    }
  }

  // One harmony/1 line.
  void native_line(std::string_view line, admin_context& ctx, admin_result& out) {
    command_line c = parse_command(line);
    if (c.verb.empty() || c.verb.front() == '#') return;
    switch (admin_permission(c.verb, authenticated_, agent_)) {
      case admin_access::allowed: break;
      case admin_access::needs_auth:
        ctx.log(log_level::warn, "admin connection from %s closed: '%.*s' before authentication", peer_name().c_str(),
                static_cast<int>(std::min<std::size_t>(c.verb.size(), 64)), c.verb.data());
        error(out, "auth-required", "a secret is set: send 'hello', then 'auth PROOF' for its nonce");
        return end(out, "not authenticated", true);
      case admin_access::agent_forbidden:
        return error(out, "forbidden", "an agent's connection changes only its own backend");
    }
    auto need_args = [&](std::size_t n, const char* usage) {
      if (c.args.size() == n) return true;
      error(out, "usage", usage);
      return false;
    };
    auto answer = [&](std::error_code e, const std::string& ok_text) {
      if (!e) return append(out, ok_text.empty() ? "ok\n" : "ok " + ok_text + "\n");
      const char* code =
          e == errc::unknown_backend ? "unknown-backend" : e == errc::bad_option ? "bad-argument" : "failed";
      error(out, code, e.message());
    };
    auto weight_of = [&](std::string_view text, int& w) {
      if (!parse_weight(text, w)) return true;
      error(out, "bad-argument", weight_range());
      return false;
    };

    if (c.verb == "hello") {
      std::string hello = "ok harmony/1 harmonyd/" + std::to_string(HARMONY_VERSION_MAJOR) + "." +
                          std::to_string(HARMONY_VERSION_MINOR) + "." + std::to_string(HARMONY_VERSION_PATCH);
      if (config_.secret.empty()) return append(out, hello + " auth=none\n");
      if (authenticated_) return append(out, hello + " auth=hmac-sha256 authenticated\n");
      // A fresh nonce for each hello; the one before it is gone.
      std::uint8_t bytes[32];
      if (!ctx.services.random(bytes, sizeof bytes)) {
        nonce_.clear();
        ctx.log(log_level::error, "no random bytes for the admin nonce of %s", peer_name().c_str());
        error(out, "failed", "no random bytes");
        return end(out, "no random bytes", true);
      }
      nonce_ = to_hex(bytes, sizeof bytes);
      return append(out, hello + " auth=hmac-sha256 nonce=" + nonce_ + "\n");
    }
    if (c.verb == "auth") return command_auth(c, ctx, out);
    if (c.verb == "ping") {
      if (agent_) ctx.backends.lock()->ack(bound_id_, ctx.now);
      return append(out, "pong\n");
    }
    if (c.verb == "register") return command_register(c, ctx, out);
    if (c.verb == "weight") {
      int w = 0;
      if (!need_args(1, "weight W") || !weight_of(c.args[0], w)) return;
      if (bound_id_.empty()) return error(out, "not-registered", "register first");
      return answer(ctx.backends.lock()->set_weight(bound_id_, w), "weight=" + std::to_string(w));
    }
    if (c.verb == "report") return command_report(c, ctx, out);
    if (c.verb == "close") {
      if (bound_id_.empty()) return error(out, "not-registered", "register first");
      std::string id = bound_id_;
      admin_effect unbind;
      unbind.what = admin_effect::kind::unbind_agent;
      unbind.id = id;
      out.effects.push_back(std::move(unbind));
      agent_ = false;
      bound_id_.clear();
      ctx.log(log_level::debug, "backend %s deregistered", id.c_str());
      return answer(ctx.backends.lock()->remove(id, "its agent deregistered"), "closed id=" + id);
    }
    if (c.verb == "list") {
      auto list = ctx.backends.lock()->list(ctx.now);
      std::string text;
      for (const auto& b : list)
        text += "backend id=" + b.id + " address=" + b.address.to_string() + " weight=" + std::to_string(b.weight) +
                " active=" + std::to_string(b.active) + " total=" + std::to_string(b.total) +
                " failures=" + std::to_string(b.failures) + " state=" + b.state +
                " maxconn=" + std::to_string(b.maxconn) + " backup=" + (b.backup ? "yes" : "no") +
                (b.proxy == proxy_protocol::none ? std::string() : std::string(" proxy=") + to_string(b.proxy)) +
                (b.source.empty() ? std::string() : " source=" + b.source) + "\n";
      text += "ok backends=" + std::to_string(list.size()) + "\n";
      return append(out, text);
    }
    if (c.verb == "stats") {
      server_stats s = ctx.services.stats();
      std::size_t backends = ctx.backends.lock()->size();
      return append(out, "ok accepted=" + std::to_string(s.accepted) + " active=" + std::to_string(s.active) +
                             " queued=" + std::to_string(s.queued) + " unavailable=" + std::to_string(s.unavailable) +
                             " connect_failures=" + std::to_string(s.connect_failures) +
                             " bytes_in=" + std::to_string(s.bytes_in) + " bytes_out=" + std::to_string(s.bytes_out) +
                             " bytes_spliced=" + std::to_string(s.bytes_spliced) +
                             " refused=" + std::to_string(s.refused) +
                             " backends=" + std::to_string(backends) +
                             " concurrency=" + std::to_string(concurrency(ctx, out)) + "\n");
    }
    if (c.verb == "add") {
      if (!need_args(1, "add HOST:PORT [weight=W]")) return;
      int w = default_weight;
      std::string_view wtext;
      if (c.option("weight", wtext) && !weight_of(wtext, w)) return;
      std::string id;
      std::error_code e = ctx.services.add_static(c.args[0], w, &id);
      if (e == errc::bad_address || e == errc::resolve_failed) return error(out, "bad-argument", e.message());
      return answer(e, "id=" + id);
    }
    if (c.verb == "remove") {
      if (!need_args(1, "remove ID")) return;
      return answer(ctx.backends.lock()->remove(c.args[0]), "");
    }
    if (c.verb == "set-weight") {
      int w = 0;
      if (!need_args(2, "set-weight ID W") || !weight_of(c.args[1], w)) return;
      return answer(ctx.backends.lock()->set_weight(c.args[0], w), "weight=" + std::to_string(w));
    }
    if (c.verb == "drain" || c.verb == "undrain") {
      if (!need_args(1, "drain ID | undrain ID")) return;
      return answer(ctx.backends.lock()->drain(c.args[0], c.verb == "drain", ctx.now), "");
    }
    if (c.verb == "concurrency") {
      if (c.args.empty()) return append(out, "ok concurrency=" + std::to_string(concurrency(ctx, out)) + "\n");
      long long v = 0;
      if (parse_integer(c.args[0], min_concurrency, max_concurrency, v))
        return error(out, "bad-argument", "concurrency is -1 (no limit), 0 (paused) or N");
      int limit = static_cast<int>(v);
      admin_effect set;
      set.what = admin_effect::kind::set_concurrency;
      set.limit = limit;
      out.effects.push_back(std::move(set));
      return append(out, "ok concurrency=" + std::to_string(limit) + "\n");
    }
    if (c.verb == "help") return append(out, std::string(help_text()) + "ok\n");
    if (c.verb == "quit" || c.verb == "bye") {
      append(out, "ok bye\n");
      return end(out, "quit", true);
    }
    std::string verb(c.verb.substr(0, 64));
    error(out, "unknown-command", "'" + verb + "' (try 'help')");
  }

  static const char* help_text() noexcept {
    return "# harmony/1 admin commands (one per line; replies end with 'ok ...' or 'err CODE MESSAGE')\n"
           "# hello [harmony/1]                      protocol version\n"
           "# register port=P [id=ID] [host=H] [weight=W] [maxconn=N] [proxy=v1|v2] [heartbeat=DUR]   agent: join or rejoin\n"
           "# ping                                   agent heartbeat (answer: pong)\n"
           "# weight W                               agent: change its own weight\n"
           "# report [weight=W] [maxconn=N] [state=ready|drain|down]   agent: report its own load\n"
           "# close                                  agent: deregister now\n"
           "# list                                   backends with state, weight, connections\n"
           "# stats                                  balancer counters\n"
           "# add HOST:PORT [weight=W]               add a static backend\n"
           "# remove ID | set-weight ID W | drain ID | undrain ID\n"
           "# concurrency [N]                        show or set the concurrency limit\n"
           "# quit\n";
  }

  dialect current_dialect() const noexcept { return dialect_; }
  bool authenticated() const noexcept { return authenticated_; }
  const std::string& bound_id() const noexcept { return bound_id_; }    // the backend it speaks for
  const std::string& closed_id() const noexcept { return closed_id_; }  // deregistered here (legacy CLOSE)
  bool agent() const noexcept { return agent_; }  // a native agent: its connection is its liveness
  std::int64_t heartbeat_ms() const noexcept { return heartbeat_ms_; }
  bool ended() const noexcept { return ended_; }
  const resolved_address& peer() const noexcept { return peer_; }
  const std::string& peer_host() const noexcept { return peer_host_; }

 private:
  // `auth PROOF`: one try per nonce; a wrong or missing proof ends the connection.
  void command_auth(const command_line& c, admin_context& ctx, admin_result& out) {
    if (config_.secret.empty()) return error(out, "usage", "no secret is set: there is nothing to authenticate");
    if (authenticated_) return append(out, "ok authenticated\n");
    if (nonce_.empty()) {
      ctx.log(log_level::warn, "admin connection from %s closed: auth without a nonce", peer_name().c_str());
      error(out, "auth-required", "send 'hello' first: its reply carries the nonce");
      return end(out, "auth without a nonce", true);
    }
    std::string expected = admin_auth_proof(config_.secret, nonce_);
    nonce_.clear();  // used once, right or wrong
    std::string given = c.args.size() == 1 && c.options.empty() ? std::string(c.args[0]) : std::string();
    for (char& ch : given)
      if (ch >= 'A' && ch <= 'F') ch = static_cast<char>(ch - 'A' + 'a');
    if (!constant_time_equal(given, expected)) {
      ctx.log(log_level::warn, "admin connection from %s closed: wrong authentication proof", peer_name().c_str());
      error(out, "auth-failed", "wrong proof for the nonce");
      return end(out, "authentication failed", true);
    }
    authenticated_ = true;
    ctx.log(log_level::debug, "admin connection from %s authenticated", peer_name().c_str());
    append(out, "ok authenticated\n");
  }

  void command_register(const command_line& c, admin_context& ctx, admin_result& out) {
    std::string_view text;
    std::uint64_t port = 0;
    if (!c.option("port", text) || !parse_uint(text, 65535, port) || port == 0)
      return error(out, "bad-argument", "register needs port=1..65535");
    int weight = default_weight;
    if (c.option("weight", text) && parse_weight(text, weight)) return error(out, "bad-argument", weight_range());
    long long maxconn = 0;  // absent: no limit
    if (c.option("maxconn", text) && parse_integer(text, 0, max_maxconn, maxconn))
      return error(out, "bad-argument", "maxconn is 0 (no limit) to " + std::to_string(max_maxconn));
    proxy_protocol proxy = proxy_protocol::none;  // absent: none
    if (c.option("proxy", text) && parse_proxy_protocol(text, proxy))
      return error(out, "bad-argument", "proxy is none, v1 or v2");
    std::int64_t heartbeat = 0;
    if (c.option("heartbeat", text)) {
      duration d{};
      if (parse_duration(text, d) || d.count() <= 0)
        return error(out, "bad-argument", "heartbeat is a duration, e.g. 20s");
      heartbeat = d.count();
    }
    endpoint at{peer_host_, static_cast<std::uint16_t>(port)};
    resolved_address to = peer_.with_port(at.port);
    if (c.option("host", text)) {
      at.host.assign(text.data(), text.size());
      if (at.host.empty() || ctx.services.resolve(at, to)) return error(out, "bad-argument", "cannot resolve host");
    }
    std::string id;
    if (c.option("id", text)) id.assign(text.data(), text.size());
    {
      auto r = ctx.backends.lock();
      if (!id.empty() && r->known(id)) {
        r->set_address(id, at, to, ctx.now);
        r->set_weight(id, weight);
        r->set_online(id, true, ctx.now);
        ctx.log(log_level::debug, "backend %s re-registered at %s weight %d", id.c_str(), at.to_string().c_str(),
                weight);
      } else {
        // A balancer that restarted does not know the agent: it rejoins under its old id.
        std::string wanted = id;
        if (auto e = r->add(at, &to, weight, true, &id, ctx.now, wanted)) {
          ctx.log(log_level::warn, "registration from %s refused: %s", peer_name().c_str(), e.message().c_str());
          return error(out, "refused", e.message());
        }
        ctx.log(log_level::debug, "backend %s registered at %s weight %d", id.c_str(), at.to_string().c_str(), weight);
      }
      r->set_maxconn(id, static_cast<int>(maxconn));
      r->set_proxy(id, proxy);
    }
    admin_effect bind;
    bind.what = admin_effect::kind::bind_agent;
    bind.id = id;
    if (agent_ && bound_id_ != id) bind.previous = bound_id_;
    out.effects.push_back(std::move(bind));
    heartbeat_ms_ = heartbeat;
    bound_id_ = id;
    agent_ = true;
    append(out, "ok id=" + id + "\n");
    // A heartbeat longer than the host timeout lets the backend expire between two:
    // it would flap between up and expired. Accepted, but the agent and the log are told.
    if (config_.host_timeout_ms > 0 && heartbeat > config_.host_timeout_ms / 2) {
      std::string h = format_duration(duration(heartbeat)), t = format_duration(duration(config_.host_timeout_ms));
      ctx.log(log_level::warn, "backend %s: heartbeat %s is more than half the host timeout %s: it may expire between heartbeats",
              id.c_str(), h.c_str(), t.c_str());
      append(out, "notice heartbeat-too-long heartbeat " + h + " is more than half the host timeout " + t +
                      ": the backend may expire between heartbeats; use at most " +
                      format_duration(duration(config_.host_timeout_ms / 2)) + "\n");
    }
  }

  // `report weight=W maxconn=N state=ready|drain|down`, any subset but not none: an
  // agent sets its own backend's weight, connection limit (0: none) and readiness, as
  // HAProxy's agent-check lets a server do. All are checked before any is applied.
  void command_report(const command_line& c, admin_context& ctx, admin_result& out) {
    const char* usage = "report [weight=W] [maxconn=N] [state=ready|drain|down]";
    if (!c.args.empty() || c.options.empty()) return error(out, "usage", usage);
    int weight = 0;
    long long maxconn = -1;
    readiness state = readiness::ready;
    bool has_weight = false, has_maxconn = false, has_state = false;
    for (const auto& o : c.options) {
      if (o.first == "weight" && !has_weight) {
        if (parse_weight(o.second, weight)) return error(out, "bad-argument", weight_range());
        has_weight = true;
      } else if (o.first == "maxconn" && !has_maxconn) {
        if (parse_integer(o.second, 0, max_maxconn, maxconn))
          return error(out, "bad-argument", "maxconn must be a number from 0 (no limit) to " + std::to_string(max_maxconn));
        has_maxconn = true;
      } else if (o.first == "state" && !has_state) {
        if (parse_readiness(o.second, state)) return error(out, "bad-argument", "state is ready, drain or down");
        has_state = true;
      } else {
        return error(out, "usage", usage);  // unknown or repeated
      }
    }
    if (bound_id_.empty() || !agent_) return error(out, "not-registered", "register first");
    std::string applied;
    {
      auto r = ctx.backends.lock();
      std::error_code e;
      if (has_weight && !e) e = r->set_weight(bound_id_, weight);
      if (has_maxconn && !e) e = r->set_maxconn(bound_id_, static_cast<int>(maxconn));
      if (has_state && !e) e = r->set_readiness(bound_id_, state, ctx.now);
      if (e) return error(out, e == errc::unknown_backend ? "unknown-backend" : "failed", e.message());
    }
    if (has_weight) applied += " weight=" + std::to_string(weight);
    if (has_maxconn) applied += " maxconn=" + std::to_string(maxconn);
    if (has_state) applied += std::string(" state=") + to_string(state);
    ctx.log(log_level::info, "backend %s reports%s", bound_id_.c_str(), applied.c_str());
    append(out, "ok" + applied + "\n");
  }

  // The limit in force once the effects so far are applied.
  static int concurrency(admin_context& ctx, const admin_result& out) {
    for (auto it = out.effects.rbegin(); it != out.effects.rend(); ++it)
      if (it->what == admin_effect::kind::set_concurrency) return it->limit;
    return ctx.services.concurrency();
  }
  static std::string weight_range() {
    return "weight must be a number from " + std::to_string(min_weight) + " to " + std::to_string(max_weight);
  }
  static void append(admin_result& out, std::string text) { out.replies.push_back(std::move(text)); }
  static void error(admin_result& out, std::string_view code, std::string_view message) {
    std::string line = "err ";
    line.append(code.data(), code.size()).append(" ").append(message.data(), message.size()).append("\n");
    out.replies.push_back(std::move(line));
  }
  void end(admin_result& out, const char* why, bool graceful) {
    ended_ = true;
    admin_effect e;
    e.what = admin_effect::kind::end;
    e.graceful = graceful;
    e.why = why;
    out.effects.push_back(std::move(e));
  }
  std::string peer_name() const { return endpoint{peer_host_, peer_.port}.to_string(); }

  config config_;
  resolved_address peer_;
  std::string peer_host_;
  dialect dialect_ = dialect::undecided;
  std::string first_bytes_;
  legacy_parser legacy_;
  line_splitter lines_;
  std::string bound_id_;
  std::string closed_id_;
  bool agent_ = false;
  std::int64_t heartbeat_ms_ = 0;
  bool ended_ = false;
  bool authenticated_ = true;  // no secret, or the proof was right
  std::string nonce_;          // of the last hello, until an auth uses it
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>wait-queue  sans-IO FIFO of connections waiting for a concurrency slot
// The connections a loop holds back under the concurrency limit, oldest first.
// Intrusive: an element carries its own wait_hook, so push, remove (from
// anywhere: a waiting client that hangs up or times out) and pop are O(1) and
// never allocate. Each element records when it joined, so the caller can time
// out the oldest without a timer per element. Not thread-safe: one loop owns it.
//
//   struct conn { wait_hook<conn> waiting; ... };
//   wait_queue<conn, &conn::waiting> q;
template <class T>
struct wait_hook {
  T* next = nullptr;
  T* prev = nullptr;
  std::int64_t since = 0;  // when it joined the queue
  bool queued = false;
};

template <class T, wait_hook<T> T::*Hook>
class wait_queue {
 public:
  wait_queue() = default;
  wait_queue(const wait_queue&) = delete;
  wait_queue& operator=(const wait_queue&) = delete;

  // Appends `x` as the newest element; false (and no change) if it is queued already.
  bool push(T* x, std::int64_t now) {
    wait_hook<T>& h = x->*Hook;
    if (h.queued) return false;
    h.next = nullptr;
    h.prev = tail_;
    h.since = now;
    h.queued = true;
    if (tail_) (tail_->*Hook).next = x;
    else head_ = x;
    tail_ = x;
    ++length_;
    return true;
  }

  // Puts `x` back as the oldest element, keeping the time it first joined
  // (`since`), e.g. one that was let go and could not proceed; false if queued.
  bool push_front(T* x) {
    wait_hook<T>& h = x->*Hook;
    if (h.queued) return false;
    h.prev = nullptr;
    h.next = head_;
    h.queued = true;
    if (head_) (head_->*Hook).prev = x;
    else tail_ = x;
    head_ = x;
    ++length_;
    return true;
  }

  // Takes `x` out wherever it is; false if it was not queued.
  bool remove(T* x) {
    wait_hook<T>& h = x->*Hook;
    if (!h.queued) return false;
    if (h.prev) (h.prev->*Hook).next = h.next;
    else head_ = h.next;
    if (h.next) (h.next->*Hook).prev = h.prev;
    else tail_ = h.prev;
    h.next = h.prev = nullptr;
    h.queued = false;
    --length_;
    return true;
  }

  // Takes out and returns the oldest element, or nullptr when empty.
  T* pop() {
    T* x = head_;
    if (x) remove(x);
    return x;
  }

  T* oldest() const noexcept { return head_; }
  // When the oldest element joined; meaningful only when not empty.
  std::int64_t oldest_since() const noexcept { return head_ ? (head_->*Hook).since : 0; }
  static bool contains(const T* x) noexcept { return (x->*Hook).queued; }
  std::size_t size() const noexcept { return length_; }
  bool empty() const noexcept { return length_ == 0; }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
  std::size_t length_ = 0;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>engine  the contract every engine implements: poller, connection, acceptor
// An engine is chosen at compile time (>>config) and provides, in its own parts:
//
//   io_handler   what the poller delivers to: on_io(events) on readiness engines,
//                on_complete(operation) on the completion engine; `retired` once
//                closed, so that events already dequeued for it are dropped.
//   poller       open(); add(socket, handler, interest); interest(...); remove(socket);
//                wait(timeout_ms, woke, released) dispatching to handlers; wake() from
//                any thread; settle() before the memory of handlers is freed;
//                defer_release(handler, release): true when the release must wait for
//                operations still in flight.
//   connection   one socket on one loop, the only thing that reads and writes a
//                socket: adopt / connect, read when readable, write with completion,
//                shutdown_send once writes drained, close; it reports to a
//                connection_owner. Every socket user (the admin port, the agent, the
//                proxy pump) is built on it.
//   acceptor     a listening socket handing over accepted sockets.
//
// The readiness engines (epoll, poll) share one connection and one acceptor
// (>>readiness); IOCP has its own (>>iocp). Nothing outside the engine parts
// knows which engine it runs on.
enum : unsigned { io_read = 1, io_write = 2, io_error = 4, io_peer_closed = 8 };

struct timer {
  std::int64_t deadline = 0;
  std::size_t index = static_cast<std::size_t>(-1);
  std::function<void()> fire;
  bool armed() const noexcept { return index != static_cast<std::size_t>(-1); }
};

class connection;

// What a connection tells its owner. Each call may close the connection (and
// ask for the owner's release); the connection checks before it goes on.
struct connection_owner {
  // A connect() that returned `pending` has finished: connected, or the error.
  virtual void on_connected(connection& c, std::error_code error) = 0;
  // read() may now return bytes, the end of the stream or an error. Called only
  // while the owner wants to read (want_read).
  virtual void on_readable(connection& c) = 0;
  // A write() that returned `pending` has finished: `bytes` more were written
  // since write() returned, or the error that ended it.
  virtual void on_written(connection& c, std::size_t bytes, std::error_code error) = 0;

 protected:
  ~connection_owner() = default;
};

enum class io_status {
  done,     // finished now
  pending,  // goes on; the owner hears of the end (on_connected / on_written)
  failed,   // the error is in the error_code given
};

// The result of connection::read: bytes (> 0), the end of the stream (0), or
// nothing for now (-1 with no error) / a failure (-1 with the error set).
using read_result = std::ptrdiff_t;

}  // namespace detail
}  // namespace harmony

#if !defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>pollers  the readiness pollers: epoll (edge-triggered) and poll (level-triggered)
struct io_handler {
  virtual void on_io(unsigned events) = 0;
  bool retired = false;  // closed during this loop turn: its pending events are stale

 protected:
  ~io_handler() = default;
};

// Wakes a poller from another thread: an eventfd on Linux, a pipe elsewhere.
// A full pipe or counter already means "wake up", so a failed write is harmless.
class wake_channel final : public io_handler {
 public:
  wake_channel() = default;
  wake_channel(const wake_channel&) = delete;
  wake_channel& operator=(const wake_channel&) = delete;
  ~wake_channel() {
    if (read_ >= 0) ::close(read_);
    if (write_ >= 0 && write_ != read_) ::close(write_);
  }
  std::error_code open() {
#if defined(HARMONY_USE_EPOLL)
    read_ = write_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (read_ < 0) return system_error_code(errno);
#else
    int p[2];
    if (::pipe(p) != 0) return system_error_code(errno);
    read_ = p[0];
    write_ = p[1];
    if (!set_nonblocking(read_) || !set_nonblocking(write_)) return system_error_code(errno);
#endif
    return {};
  }
  int descriptor() const noexcept { return read_; }
  void wake() noexcept {
    if (write_ < 0) return;
#if defined(HARMONY_USE_EPOLL)
    std::uint64_t one = 1;
    ssize_t r = ::write(write_, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = ::write(write_, &one, 1);
#endif
    (void)r;
  }
  void on_io(unsigned) override {
    char sink[64];
    while (::read(read_, sink, sizeof sink) > 0) {
    }
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

// What the readiness pollers share: the wake channel, and the contract's parts
// that only the completion engine needs.
class readiness_poller_base {
 public:
  void wake() noexcept { waker_.wake(); }
  void settle(std::vector<std::function<void()>>&) noexcept {}
  bool defer_release(io_handler&, std::function<void()>&) noexcept { return false; }

 protected:
  wake_channel waker_;
};

#if defined(HARMONY_USE_EPOLL)
// Edge-triggered: each socket is registered once for everything, so changing what
// a connection waits for costs no system call; connections track readiness themselves.
class poller : public readiness_poller_base {
 public:
  static constexpr bool edge_triggered = true;
  poller() = default;
  poller(const poller&) = delete;
  poller& operator=(const poller&) = delete;
  ~poller() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::error_code open() {
    fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd_ < 0) return system_error_code(errno);
    if (auto e = waker_.open()) return e;
    return add(waker_.descriptor(), &waker_, io_read);
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned) {
    epoll_event e{};
    e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    e.data.ptr = h;
    return ::epoll_ctl(fd_, EPOLL_CTL_ADD, s, &e) == 0 ? std::error_code{} : system_error_code(errno);
  }
  void interest(socket_handle, io_handler*, unsigned) noexcept {}
  // Closing a socket removes it from the epoll set by itself.
  void remove(socket_handle) noexcept {}
  // Waits up to `timeout_ms`, calls `woke()` as soon as the wait ends and then
  // each ready handler. A failed wait other than EINTR is returned.
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>&) {
    int n = ::epoll_wait(fd_, events_, max_events, timeout_ms);
    int error = n < 0 ? errno : 0;
    woke();
    for (int i = 0; i < n; ++i) {
      unsigned ev = 0, e = events_[i].events;
      if (e & EPOLLIN) ev |= io_read;
      if (e & EPOLLOUT) ev |= io_write;
      if (e & EPOLLERR) ev |= io_error | io_read | io_write;
      if (e & (EPOLLRDHUP | EPOLLHUP)) ev |= io_peer_closed | io_read;
      if (e & EPOLLHUP) ev |= io_write;
      auto* h = static_cast<io_handler*>(events_[i].data.ptr);
      if (!h->retired) h->on_io(ev);
    }
    return error && error != EINTR ? system_error_code(error) : std::error_code{};
  }

 private:
  static constexpr int max_events = 256;
  int fd_ = -1;
  epoll_event events_[max_events];
};
#elif defined(HARMONY_USE_POLL)
// Level-triggered poll(2): connections state what they wait for.
class poller : public readiness_poller_base {
 public:
  static constexpr bool edge_triggered = false;
  std::error_code open() {
    if (auto e = waker_.open()) return e;
    return add(waker_.descriptor(), &waker_, io_read);
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) {
    if (s < 0) return system_error_code(EBADF);
    if (static_cast<std::size_t>(s) >= slot_of_.size()) slot_of_.resize(static_cast<std::size_t>(s) + 1, -1);
    slot_of_[static_cast<std::size_t>(s)] = static_cast<int>(fds_.size());
    pollfd p{};
    p.fd = watched(s, interest);
    p.events = mask(interest);
    fds_.push_back(p);
    handlers_.push_back(h);
    return {};
  }
  void interest(socket_handle s, io_handler*, unsigned interest) noexcept {
    int slot = lookup(s);
    if (slot < 0) return;
    pollfd& p = fds_[static_cast<std::size_t>(slot)];
    p.fd = watched(s, interest);
    p.events = mask(interest);
  }
  void remove(socket_handle s) noexcept {
    int slot = lookup(s);
    if (slot < 0) return;
    std::size_t i = static_cast<std::size_t>(slot), last = fds_.size() - 1;
    if (i != last) {
      fds_[i] = fds_[last];
      handlers_[i] = handlers_[last];
      slot_of_[static_cast<std::size_t>(descriptor(fds_[i]))] = slot;
    }
    fds_.pop_back();
    handlers_.pop_back();
    slot_of_[static_cast<std::size_t>(s)] = -1;
  }
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>&) {
    int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout_ms);
    int error = n < 0 ? errno : 0;
    woke();
    if (n <= 0) return error && error != EINTR ? system_error_code(error) : std::error_code{};
    ready_.clear();
    for (std::size_t i = 0; i < fds_.size() && ready_.size() < static_cast<std::size_t>(n); ++i) {
      short r = fds_[i].revents;
      if (!r) continue;
      unsigned ev = 0;
      if (r & POLLIN) ev |= io_read;
      if (r & POLLOUT) ev |= io_write;
      if (r & (POLLERR | POLLNVAL)) ev |= io_error | io_read | io_write;
      if (r & POLLHUP) ev |= io_peer_closed | io_read | io_write;
      ready_.push_back({handlers_[i], ev});
    }
    for (auto& r : ready_)
      if (!r.first->retired) r.first->on_io(r.second);
    return {};
  }

 private:
  // poll(2) reports a hang-up or an error even for a descriptor that asks for
  // nothing, and level-triggered it would report it on every turn: a connection
  // that waits for nothing (a client in the wait queue that hung up) would spin
  // the loop. A negative descriptor is skipped by poll, so that is how "nothing" is said.
  static int watched(socket_handle s, unsigned interest) noexcept { return interest ? s : -1 - s; }
  static int descriptor(const pollfd& p) noexcept { return p.fd < 0 ? -1 - p.fd : p.fd; }
  static short mask(unsigned interest) noexcept {
    return static_cast<short>(((interest & io_read) ? POLLIN : 0) | ((interest & io_write) ? POLLOUT : 0));
  }
  int lookup(socket_handle s) const noexcept {
    return s >= 0 && static_cast<std::size_t>(s) < slot_of_.size() ? slot_of_[static_cast<std::size_t>(s)] : -1;
  }
  std::vector<pollfd> fds_;
  std::vector<io_handler*> handlers_;
  std::vector<int> slot_of_;
  std::vector<std::pair<io_handler*, unsigned>> ready_;
};
#endif

}  // namespace detail
}  // namespace harmony
#endif  // !HARMONY_USE_IOCP

#if defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>iocp-poller  the completion engine's poller: an I/O completion port
struct io_op;

// What the completion engine keeps per socket. The kernel writes into an
// operation until its completion is dequeued, so a handler is released only
// when every operation it started has come back; `group` is the handler that
// counts them (the two sockets of a session count on one) and holds the release.
struct io_handler {
  virtual void on_complete(io_op& op, int error, std::uint32_t bytes) = 0;
  bool retired = false;  // closed: completions still to come are only counted back
  struct iocp_state {
    io_handler* group = nullptr;  // null: this handler
    std::uint32_t outstanding = 0;
    unsigned interest = 0;
    socket_handle socket = invalid_socket;  // while registered
    io_op* reading = nullptr;               // the zero-byte receive in flight
    io_op* writing = nullptr;               // the send or connect in flight
    std::function<void()> release;
  } iocp;
  io_handler* counting() noexcept { return iocp.group ? iocp.group : this; }

 protected:
  ~io_handler() = default;
};

// Windows: an I/O completion port. Readiness is emulated the libuv way: a socket
// that wants to read keeps one zero-byte overlapped WSARecv in flight, which
// completes when data (or a FIN, or a reset) arrives and costs no buffer while the
// connection is idle; the handler then reads with plain non-blocking recv, as on
// POSIX. Interest is level-triggered, like poll: after each delivery the probe is
// posted again while the handler still wants to read. A send that would block goes
// out as an overlapped WSASend of the caller's bytes, which stay put until its
// completion says how many went (see >>iocp for the connection). Connects use ConnectEx
// and the listener AcceptEx, both found through WSAIoctl.
enum : unsigned { op_probe, op_send, op_connect, op_accept };

struct io_op {
  OVERLAPPED overlapped;  // first, so that a dequeued OVERLAPPED* is the operation
  io_handler* owner;
  socket_handle socket;
  unsigned kind;
  int failed;   // set when the call failed at once: a completion posted by hand carries it
  bool stale;   // its socket was closed: count it back, deliver nothing
  bool pooled;  // belongs to the engine's pool (the listener owns its accept operations)
  io_op* next;  // the pool's free list
};

// An AcceptEx in flight: the socket it fills and the room for both addresses.
struct accept_op : io_op {
  static constexpr DWORD address_room = sizeof(sockaddr_storage) + 16;
  socket_handle accepted = invalid_socket;
  char addresses[2 * address_room];
};

class poller {
 public:
  static constexpr bool edge_triggered = false;
  poller() = default;
  poller(const poller&) = delete;
  poller& operator=(const poller&) = delete;
  ~poller() {
    if (port_) ::CloseHandle(port_);
    // An operation still in flight here (settle() gave up) may yet be written by
    // the kernel: its memory is left alone rather than freed under it.
    if (in_flight_ == 0)
      while (free_) {
        io_op* op = free_;
        free_ = op->next;
        delete op;
      }
  }
  std::error_code open() {
    if (!winsock_ready()) return system_error_code(WSANOTINITIALISED);
    port_ = ::CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 1);
    return port_ ? std::error_code{} : system_error_code(static_cast<int>(::GetLastError()));
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) {
    if (!::CreateIoCompletionPort(reinterpret_cast<HANDLE>(s), port_, 0, 0))
      return system_error_code(static_cast<int>(::GetLastError()));
    sockets_[s] = h;
    h->iocp.socket = s;
    h->iocp.interest = 0;
    this->interest(s, h, interest);
    return {};
  }
  void interest(socket_handle, io_handler* h, unsigned interest) {
    h->iocp.interest = interest;
    if ((interest & io_read) && !h->iocp.reading && h->iocp.socket != invalid_socket) probe(h);
  }
  // Cancels what the socket has in flight; the caller closes it next. (Wine
  // completes a receive cut short by closesocket with an odd status; after
  // CancelIoEx it reports the usual ERROR_OPERATION_ABORTED.)
  void remove(socket_handle s) noexcept {
    auto it = sockets_.find(s);
    if (it == sockets_.end()) return;
    io_handler* h = it->second;
    sockets_.erase(it);
    ::CancelIoEx(reinterpret_cast<HANDLE>(s), nullptr);
    for (io_op** op : {&h->iocp.reading, &h->iocp.writing})
      if (*op) {
        (*op)->stale = true;
        *op = nullptr;
      }
    h->iocp.socket = invalid_socket;
  }

  void send(socket_handle s, io_handler* h, const char* data, std::size_t n) {
    io_op* op = take(h, s, op_send);
    h->iocp.writing = op;
    WSABUF buffer;
    buffer.len = static_cast<ULONG>(std::min<std::size_t>(n, 1u << 30));
    buffer.buf = const_cast<char*>(data);
    if (::WSASend(s, &buffer, 1, nullptr, 0, &op->overlapped, nullptr) != 0) started(op, ::WSAGetLastError());
  }
  void connect(socket_handle s, io_handler* h, const address& to) {
    io_op* op = take(h, s, op_connect);
    h->iocp.writing = op;
    LPFN_CONNECTEX connect_ex = nullptr;
    GUID id = WSAID_CONNECTEX;
    DWORD size = 0;
    if (::WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &connect_ex, sizeof connect_ex, &size,
                   nullptr, nullptr) != 0)
      return started(op, ::WSAGetLastError());
    if (!connect_ex(s, to.get(), to.length, nullptr, 0, nullptr, &op->overlapped)) started(op, ::WSAGetLastError());
  }
  // Starts an AcceptEx on `listener` into a fresh socket; the listener owns `op`.
  std::error_code accept(socket_handle listener, io_handler* h, accept_op& op, int family) {
    op.accepted = open_stream_socket(family);
    if (op.accepted == invalid_socket) return system_error_code(last_socket_error());
    LPFN_ACCEPTEX accept_ex = nullptr;
    GUID id = WSAID_ACCEPTEX;
    DWORD size = 0;
    int e = 0;
    if (::WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &accept_ex, sizeof accept_ex, &size,
                   nullptr, nullptr) != 0)
      e = ::WSAGetLastError();
    if (!e) {
      prepare(op, h, listener, op_accept);
      op.pooled = false;
      ++h->counting()->iocp.outstanding;
      ++in_flight_;
      DWORD received = 0;
      if (accept_ex(listener, op.accepted, op.addresses, 0, accept_op::address_room, accept_op::address_room,
                    &received, &op.overlapped) ||
          ::WSAGetLastError() == ERROR_IO_PENDING)
        return {};
      e = ::WSAGetLastError();
      --h->counting()->iocp.outstanding;
      --in_flight_;
    }
    close_socket(op.accepted);
    op.accepted = invalid_socket;
    return system_error_code(e);
  }

  // One wake-up packet in the port at a time is enough: the loop runs every task
  // queued before it dequeues the packet's successor.
  void wake() {
    if (!wake_posted_.exchange(true, std::memory_order_acq_rel))
      ::PostQueuedCompletionStatus(port_, 0, wake_key, nullptr);
  }
  // A handler's memory may be released once every operation it (or its group)
  // started has come back: until then the kernel may still write into it.
  bool defer_release(io_handler& h, std::function<void()>& release) {
    if (h.iocp.outstanding == 0) return false;
    h.iocp.release = std::move(release);
    return true;
  }
  // Cancels every operation in flight and waits (a few seconds at most) until all
  // have come back, delivering none: for tearing a stopped loop down, before the
  // objects the kernel may still write into are freed.
  void settle(std::vector<std::function<void()>>& released) {
    cancel_all();
    std::int64_t end = now_ms() + 5000;
    while (in_flight_ > 0 && now_ms() < end) wait(100, [] {}, released);
  }

  // Dequeues completions for up to `timeout_ms`, calls `woke()` when the wait
  // ends, and hands each live one to its handler. Every completion is counted
  // back, and a retired group whose count reaches zero has its release moved to
  // `released`.
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>& released) {
    ULONG n = 0;
    BOOL got = ::GetQueuedCompletionStatusEx(port_, entries_, max_events, &n, static_cast<DWORD>(timeout_ms), FALSE);
    int error = got ? 0 : static_cast<int>(::GetLastError());
    woke();
    if (!got) return error == WAIT_TIMEOUT ? std::error_code{} : system_error_code(error);
    for (ULONG i = 0; i < n; ++i) {
      if (!entries_[i].lpOverlapped) {
        wake_posted_.store(false, std::memory_order_release);
        continue;
      }
      io_op* op = reinterpret_cast<io_op*>(entries_[i].lpOverlapped);
      io_handler* h = op->owner;
      io_handler* group = h->counting();
      if (h->iocp.reading == op) h->iocp.reading = nullptr;
      if (h->iocp.writing == op) h->iocp.writing = nullptr;
      --group->iocp.outstanding;
      --in_flight_;
      bool live = !op->stale && !h->retired && !settling_;
      if (live) {
        std::uint32_t bytes = entries_[i].dwNumberOfBytesTransferred;
        int failure = op->failed;
        if (!failure && op->overlapped.Internal != 0) {
          DWORD transferred = 0, flags = 0;
          if (!::WSAGetOverlappedResult(op->socket, &op->overlapped, &transferred, FALSE, &flags))
            failure = ::WSAGetLastError();
        }
        if (!failure && op->kind == op_connect &&
            ::setsockopt(op->socket, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, nullptr, 0) != 0)
          failure = ::WSAGetLastError();
        h->on_complete(*op, failure, bytes);
      }
      if (op->pooled) give(op);
      if (live && !h->retired && (h->iocp.interest & io_read) && !h->iocp.reading &&
          h->iocp.socket != invalid_socket)
        probe(h);
      if (group->retired && group->iocp.outstanding == 0 && group->iocp.release) {
        released.push_back(std::move(group->iocp.release));
        group->iocp.release = nullptr;
      }
    }
    return {};
  }

 private:
  // For tearing the loop down: cancels every operation on the port and posts no
  // new ones from then on.
  void cancel_all() noexcept {
    settling_ = true;
    for (auto& entry : sockets_) {
      ::CancelIoEx(reinterpret_cast<HANDLE>(entry.first), nullptr);
      for (io_op** op : {&entry.second->iocp.reading, &entry.second->iocp.writing})
        if (*op) {
          (*op)->stale = true;
          *op = nullptr;
        }
    }
  }

  static constexpr ULONG max_events = 256;
  static constexpr ULONG_PTR wake_key = 1;

  void prepare(io_op& op, io_handler* h, socket_handle s, unsigned kind) noexcept {
    std::memset(&op.overlapped, 0, sizeof op.overlapped);
    op.owner = h;
    op.socket = s;
    op.kind = kind;
    op.failed = 0;
    op.stale = false;
  }
  io_op* take(io_handler* h, socket_handle s, unsigned kind) {
    io_op* op = free_;
    if (op) free_ = op->next;
    else op = new io_op;
    prepare(*op, h, s, kind);
    op->pooled = true;
    ++h->counting()->iocp.outstanding;
    ++in_flight_;
    return op;
  }
  void give(io_op* op) noexcept {
    op->next = free_;
    free_ = op;
  }
  // After an overlapped call returned non-zero: pending is the normal case; a call
  // that failed at once queues nothing, so its failure is posted by hand and comes
  // back through the port like any other completion.
  void started(io_op* op, int error) {
    if (error == WSA_IO_PENDING || error == ERROR_IO_PENDING) return;
    op->failed = error ? error : WSAEINVAL;
    ::PostQueuedCompletionStatus(port_, 0, 0, &op->overlapped);
  }
  void probe(io_handler* h) {
    io_op* op = take(h, h->iocp.socket, op_probe);
    h->iocp.reading = op;
    WSABUF buffer;
    buffer.len = 0;
    buffer.buf = nullptr;
    DWORD flags = 0;
    if (::WSARecv(h->iocp.socket, &buffer, 1, nullptr, &flags, &op->overlapped, nullptr) != 0)
      started(op, ::WSAGetLastError());
  }

  HANDLE port_ = nullptr;
  std::unordered_map<socket_handle, io_handler*> sockets_;
  io_op* free_ = nullptr;
  std::size_t in_flight_ = 0;
  bool settling_ = false;
  std::atomic<bool> wake_posted_{false};
  OVERLAPPED_ENTRY entries_[max_events];
};

}  // namespace detail
}  // namespace harmony
#endif  // HARMONY_USE_IOCP

namespace harmony {
namespace detail {

// >>reactor  one event loop: the engine's poller, timers, posted tasks, releases
class reactor {
 public:
  reactor() = default;
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;

  std::error_code open() {
    now_ = now_ms();
    return poller_.open();
  }

  // For the engine's connection and acceptor: the poller itself.
  poller& engine() noexcept { return poller_; }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) { return poller_.add(s, h, interest); }
  void interest(socket_handle s, io_handler* h, unsigned interest) { poller_.interest(s, h, interest); }
  void remove(socket_handle s) { poller_.remove(s); }

  // Called on the loop thread when the poller's wait fails (other than by a
  // signal); the loop then pauses briefly so that a lasting failure cannot spin.
  std::function<void(std::error_code)> on_error;

  // Cached at each loop turn, so hot paths never read the clock.
  std::int64_t now() const noexcept { return now_; }

  void schedule(timer& t, std::int64_t deadline) {
    if (t.armed()) cancel(t);
    t.deadline = deadline;
    t.index = timers_.size();
    timers_.push_back(&t);
    timer_up(t.index);
  }
  void cancel(timer& t) {
    if (!t.armed()) return;
    std::size_t i = t.index;
    t.index = static_cast<std::size_t>(-1);
    timer* last = timers_.back();
    timers_.pop_back();
    if (i < timers_.size()) {
      timers_[i] = last;
      last->index = i;
      timer_up(i);
      timer_down(last->index);
    }
  }

  // Thread-safe: runs `task` on the loop thread.
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(tasks_mutex_);
      tasks_.push_back(std::move(task));
    }
    poller_.wake();
  }
  void stop() {
    stopping_.store(true, std::memory_order_release);
    poller_.wake();
  }
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // Releases the owner of a handler closed during this turn: after the turn, when
  // no stale event can reach it, and not before every operation it started in
  // the kernel has come back (the completion engine).
  void retire(io_handler& h, std::function<void()> release) {
    h.retired = true;
    if (!poller_.defer_release(h, release)) graveyard_.push_back(std::move(release));
  }

  // Before the handlers of a stopped loop are freed: waits (a few seconds at most)
  // for the operations still in flight, delivering none.
  void settle() {
    poller_.settle(graveyard_);
    run_graveyard();
  }

  void run() {
    while (!stopping()) turn();
  }

  void turn() {
    int timeout = -1;
    if (!timers_.empty()) {
      std::int64_t wait = timers_.front()->deadline - now_ms();
      timeout = wait <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(wait, INT_MAX));
    }
    // The clock is read once per turn, as soon as the wait ends.
    if (std::error_code e = poller_.wait(timeout, [this] { now_ = now_ms(); }, graveyard_)) {
      if (on_error) on_error(e);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    while (!timers_.empty() && timers_.front()->deadline <= now_) {
      timer* t = timers_.front();
      cancel(*t);
      t->fire();
    }
    run_tasks();
    run_graveyard();
  }

 private:
  void run_graveyard() {
    for (std::size_t i = 0; i < graveyard_.size(); ++i) graveyard_[i]();
    graveyard_.clear();
  }
  void run_tasks() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> lock(tasks_mutex_);
      if (tasks_.empty()) return;
      batch.swap(tasks_);
    }
    for (auto& task : batch) task();
  }
  void timer_up(std::size_t i) {
    timer* t = timers_[i];
    while (i > 0) {
      std::size_t parent = (i - 1) / 2;
      if (timers_[parent]->deadline <= t->deadline) break;
      timers_[i] = timers_[parent];
      timers_[i]->index = i;
      i = parent;
    }
    timers_[i] = t;
    t->index = i;
  }
  void timer_down(std::size_t i) {
    timer* t = timers_[i];
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= timers_.size()) break;
      if (child + 1 < timers_.size() && timers_[child + 1]->deadline < timers_[child]->deadline) ++child;
      if (timers_[child]->deadline >= t->deadline) break;
      timers_[i] = timers_[child];
      timers_[i]->index = i;
      i = child;
    }
    timers_[i] = t;
    t->index = i;
  }

  poller poller_;
  std::int64_t now_ = 0;
  std::vector<timer*> timers_;
  std::mutex tasks_mutex_;
  std::vector<std::function<void()>> tasks_;
  std::vector<std::function<void()>> graveyard_;
  std::atomic<bool> stopping_{false};
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>pools  relay buffers and splice pipes, taken only while bytes are in flight
// Relay buffers in two sizes, taken only while data is in flight. A direction
// starts with a small one and moves to a large one while its source keeps
// filling whole buffers: bulk transfers then cost few system calls, and short
// exchanges little memory. Each size keeps a bounded number of spares.
class buffer_pool {
 public:
  buffer_pool(std::size_t small, std::size_t large) {
    classes_[0].size = small;
    classes_[1].size = std::max(small, large);
    for (auto& c : classes_) c.keep = std::max<std::size_t>(4, spare_bytes / c.size);
  }
  ~buffer_pool() {
    for (auto& c : classes_)
      for (char* b : c.free) delete[] b;
  }
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;
  char* take(bool large) {
    size_class& c = classes_[large];
    if (c.free.empty()) return new char[c.size];
    char* b = c.free.back();
    c.free.pop_back();
    return b;
  }
  void give(char* b, bool large) {
    size_class& c = classes_[large];
    if (c.free.size() < c.keep) return c.free.push_back(b);
    delete[] b;
    released_ += c.size;
    if (released_ >= trim_after && on_surplus) on_surplus();
  }
  // Bytes of buffers freed beyond the spares since the last call. After a burst
  // they sit in the allocator's heap as holes it may not return by itself.
  std::size_t take_released() noexcept { return std::exchange(released_, 0); }
  static constexpr std::size_t trim_after = 1u << 20;
  std::function<void()> on_surplus;  // called once a burst freed trim_after bytes
  std::size_t size(bool large) const noexcept { return classes_[large].size; }

 private:
  static constexpr std::size_t spare_bytes = 4u << 20;  // per size, per loop
  struct size_class {
    std::size_t size = 0;
    std::size_t keep = 0;
    std::vector<char*> free;
  };
  size_class classes_[2];
  std::size_t released_ = 0;
};

// Pipes for splice(2) on Linux. A streaming direction borrows one while bytes sit
// in it and gives it back empty, so an idle connection holds no pipe and no descriptor.
struct kernel_pipe {
  int read = -1;
  int write = -1;
  std::uint32_t capacity = 0;
  bool valid() const noexcept { return read >= 0; }
};

#if defined(__linux__)
class pipe_pool {
 public:
  pipe_pool() { spare_.reserve(keep); }
  ~pipe_pool() {
    for (kernel_pipe& p : spare_) shut(p);
  }
  pipe_pool(const pipe_pool&) = delete;
  pipe_pool& operator=(const pipe_pool&) = delete;
  // False when the loop already has its share of pipes or the system has no
  // descriptor to spare: the direction then goes through a buffer.
  bool take(kernel_pipe& out) noexcept {
    if (!spare_.empty()) {
      out = spare_.back();
      spare_.pop_back();
      return true;
    }
    if (open_ >= max_open) return false;
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    // A bigger pipe moves more per call. Past the user's pipe allowance
    // (fs.pipe-user-pages-soft) the kernel refuses, and the pipe works at its size.
    ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(wanted_bytes));
    int size = ::fcntl(fds[1], F_GETPIPE_SZ);
    out.read = fds[0];
    out.write = fds[1];
    out.capacity = size > 0 ? static_cast<std::uint32_t>(size) : 4096u;
    ++open_;
    return true;
  }
  // Bytes left in a pipe belong to a connection that is gone: such a pipe is closed.
  void give(kernel_pipe& p, bool empty) noexcept {
    if (!p.valid()) return;
    if (empty && spare_.size() < keep) {
      spare_.push_back(p);
    } else {
      shut(p);
      --open_;
    }
    p = kernel_pipe{};
  }

 private:
  static void shut(kernel_pipe& p) noexcept {
    ::close(p.read);
    ::close(p.write);
  }
  static constexpr std::size_t max_open = 256;  // per loop: 512 descriptors at most
  static constexpr std::size_t keep = 16;
  static constexpr std::size_t wanted_bytes = 1u << 20;
  std::vector<kernel_pipe> spare_;
  std::size_t open_ = 0;
};
#endif

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>acceptor  what the engines' acceptors share
// A listening socket on a loop, and what it hands over: each accepted socket,
// ready for use, goes to `on_accept`. The two engines take connections their own way.
class acceptor_base : public io_handler {
 public:
  std::function<void(socket_handle, const address&)> on_accept;
  // Asked before each accept: false pauses accepting (the connections wait in the
  // kernel's backlog) until resume(). Empty: always accept.
  std::function<bool()> admit;
  acceptor_base(const acceptor_base&) = delete;
  acceptor_base& operator=(const acceptor_base&) = delete;
  socket_handle socket() const noexcept { return fd_; }  // invalid_socket once closed
  // Stops accepting and closes the listener (and cancels accepts in flight).
  void close() {
    if (fd_ == invalid_socket) return;
    loop_.cancel(retry_);
    loop_.remove(fd_);
    close_socket(fd_);
    fd_ = invalid_socket;
  }

 protected:
  acceptor_base(reactor& loop, const logger& log) : loop_(loop), log_(log) {}
  ~acceptor_base() = default;

  reactor& loop_;
  const logger& log_;
  socket_handle fd_ = invalid_socket;
  timer retry_;  // after running out of sockets or memory
  bool paused_ = false;   // admit() said no: waiting for resume()
  bool starved_ = false;  // an accept failed for want of descriptors or memory

  // Out of descriptors (EMFILE, ENFILE) or memory: accepting pauses for a moment and
  // is tried again, as nginx and HAProxy do, rather than spinning on the connection it
  // cannot take. Logged once per episode, and once when it recovers.
  void starving(std::error_code e) {
    if (!starved_)
      log_(log_level::error, "accept failed: %s: pausing accepts, trying again every %d ms", e.message().c_str(),
           static_cast<int>(starved_retry_ms));
    starved_ = true;
    loop_.schedule(retry_, loop_.now() + starved_retry_ms);
  }
  void fed() {
    if (!starved_) return;
    starved_ = false;
    log_(log_level::warn, "accepting again");
  }
  static constexpr std::int64_t starved_retry_ms = 100;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>connection-core  what the connections of both engine families share
// The state every connection keeps and the calls that are the same on every
// engine: taking a socket, reading with recv, writing with send until the socket
// is full, the FIN after the last write, closing. Where the engines differ (what
// a short read means, how the rest of a write goes out, what to watch) the
// engine's connection (>>readiness, >>iocp) says so through a few hooks:
//   interest_now(), update_interest()  what the poller must watch now
//   short_read()                       a read returned less than asked
//   write_later(rest, n)               the socket took only part of a write
//   forget_writes()                    engine state of a pending write, on close
template <class Engine>
class connection_core : public io_handler {
 public:
  connection_core(const connection_core&) = delete;
  connection_core& operator=(const connection_core&) = delete;

  void set_owner(connection_owner* owner) noexcept { owner_ = owner; }
  bool is_open() const noexcept { return fd_ != invalid_socket; }
  socket_handle handle() const noexcept { return fd_; }
  bool connecting() const noexcept { return connecting_; }
  // Whether a read may find something (or the end, or an error) now.
  bool readable() const noexcept { return readable_; }
  // A write still going on: the rest of the last write() that returned pending.
  bool writing() const noexcept { return out_left_ > 0; }
  // Bytes handed to the system and not yet delivered (sent and acknowledged),
  // where the system tells; 0 where it does not.
  std::size_t unsent() const noexcept { return fd_ == invalid_socket ? 0 : unsent_bytes(fd_); }

  // Takes an accepted (or otherwise connected) socket; on failure it is closed.
  std::error_code adopt(socket_handle s) {
    self().start(s);
    if (std::error_code e = loop_.add(fd_, this, self().interest_now())) return abandon(e);
    return {};
  }

  // Whether the owner is told when the connection becomes readable.
  void want_read(bool on) {
    if (want_read_ == on) return;
    want_read_ = on;
    self().update_interest();
  }

  // Writes [data, data + n). `done`: all written now. `pending`: `written` went
  // now and the rest goes when the socket takes it; the bytes must stay where
  // they are until on_written. `failed`: `error` says why.
  io_status write(const char* data, std::size_t n, std::size_t& written, std::error_code& error) {
    written = 0;
    if (n > max_write) {  // what one write may hold (its rest is kept in 32 bits)
      error = std::make_error_code(std::errc::message_size);
      return io_status::failed;
    }
    while (written < n) {
      auto r = send_some(fd_, data + written, n - written);
      if (r >= 0) {
        written += static_cast<std::size_t>(r);
        // A short send means the socket is full: waiting beats another call.
        if (written < n) return self().write_later(data + written, n - written);
        continue;
      }
      int e = last_socket_error();
      if (would_block(e)) return self().write_later(data + written, n - written);
      if (e == EINTR) continue;
      error = system_error_code(e);
      return io_status::failed;
    }
    return io_status::done;
  }

  // Sends a FIN once every write has gone out.
  void shutdown_send() {
    if (fd_ == invalid_socket) return;
    if (writing()) {
      shutdown_pending_ = true;
      return;
    }
    ::shutdown(fd_, SHUT_WR);
  }

  // Closes now (cancelling what is in flight); with `reset`, the peer gets a reset
  // instead of a FIN. Nothing is reported after it; the owner is released
  // through reactor::retire.
  void close(bool reset) {
    if (fd_ == invalid_socket) return;
    loop_.remove(fd_);
    if (reset) abort_socket(fd_);
    else close_socket(fd_);
    fd_ = invalid_socket;
    retired = true;
    connecting_ = false;
    out_ = nullptr;
    out_left_ = 0;
    self().forget_writes();
  }

 protected:
  explicit connection_core(reactor& loop) : loop_(loop) {}
  ~connection_core() = default;  // the engine's connection closes: its hooks are gone by now

  Engine& self() noexcept { return static_cast<Engine&>(*this); }

  // Engines that keep more state extend this (and call it first).
  void start(socket_handle s) {
    fd_ = s;
    retired = false;
    readable_ = at_end_ = connecting_ = want_read_ = shutdown_pending_ = peer_closed_ = failed_ = false;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    out_pipe_ = -1;
  }
  static constexpr std::size_t max_write = 0xffffffffu;
  std::error_code abandon(std::error_code e) {
    close_socket(fd_);
    fd_ = invalid_socket;
    connecting_ = false;
    return e;
  }

  // recv into [into, into + n): bytes, the end (0), nothing for now or a failure (-1).
  read_result receive(char* into, std::size_t n, std::error_code& error) {
    if (at_end_) return 0;
    for (;;) {
      auto r = recv_some(fd_, into, n);
      if (r > 0) {
        if (static_cast<std::size_t>(r) < n) self().short_read();
        return r;
      }
      if (int k = read_returned(r, r == 0 ? 0 : last_socket_error(), error); k <= 0) return k;
    }
  }

  // What a read call that moved nothing (`r` <= 0, `e` its error) means: the end
  // (0), nothing for now or a failure (-1), or call again after a signal (1).
  int read_returned(std::ptrdiff_t r, int e, std::error_code& error) noexcept {
    if (r == 0) {
      at_end_ = true;
      return 0;
    }
    if (would_block(e)) {
      readable_ = false;
      return -1;
    }
    if (e == EINTR) return 1;
    error = system_error_code(e);
    return -1;
  }

  // The rest of a write is to go out later, from `rest`.
  void keep_rest(const char* rest, std::size_t n) noexcept {
    out_ = rest;
    out_left_ = static_cast<std::uint32_t>(n);  // n <= max_write
    out_done_ = 0;
  }
  // The pending write has ended; the FIN asked for meanwhile goes now.
  void wrote(std::error_code e) {
    std::size_t n = out_done_;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    self().forget_writes();
    self().update_interest();
    if (!e && shutdown_pending_ && fd_ != invalid_socket) {
      shutdown_pending_ = false;
      ::shutdown(fd_, SHUT_WR);
    }
    owner_->on_written(self(), n, e);
  }

  // Every proxied connection holds two of these, so they are kept small: the
  // flags first (they fill the room the handler's own flag leaves), then the
  // counts, then the pointers.
  bool readable_ = false;
  bool at_end_ = false;  // the end of the stream was read (or is known to be next)
  bool connecting_ = false;
  bool want_read_ = false;
  bool shutdown_pending_ = false;
  bool peer_closed_ = false;  // readiness: the peer's FIN has arrived, no byte follows what is queued
  bool failed_ = false;       // readiness: an error is pending on the socket
  socket_handle fd_ = invalid_socket;
  std::uint32_t out_left_ = 0;  // the rest of a pending write...
  std::uint32_t out_done_ = 0;  // ... and what of it was written since write() returned
  int out_pipe_ = -1;           // readiness on Linux: the pipe a pending write comes from (splice)
  const char* out_ = nullptr;
  reactor& loop_;
  connection_owner* owner_ = nullptr;
};

}  // namespace detail
}  // namespace harmony

#if !defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>readiness  the connection and the acceptor of the readiness engines (epoll, poll)
// Reads wait for readiness and then read without blocking; a write goes out at
// once as far as the socket takes it, and the rest waits for writability inside
// the connection, which tells the owner when all of it is out. With epoll every
// socket is registered once for everything (edge-triggered) and the connection
// remembers what it was told; with poll it states what it waits for.
class connection final : public connection_core<connection> {
 public:
  explicit connection(reactor& loop) : connection_core(loop) {}
  ~connection() { close(false); }

  // The completion engine releases connections in groups; readiness needs none.
  void share_release_with(connection&) noexcept {}

  // Starts a connect. `early` bytes, when given, are sent as soon as the socket
  // takes them: only a connected socket takes bytes, so a send that succeeds
  // right after connect() ends the connect without waiting for the event
  // (`sent` says how many went). `done`: connected now; `pending`: the owner
  // hears on_connected; `failed`: `error` says why.
  io_status connect(const address& to, const char* early, std::size_t n, std::size_t& sent, std::error_code& error) {
    sent = 0;
    socket_handle s = invalid_socket;
    bool done = false;
    if ((error = begin_connect(to, s, done))) return io_status::failed;
    start(s);
    connecting_ = !done;
    if ((error = loop_.add(fd_, this, interest_now()))) {
      abandon(error);
      return io_status::failed;
    }
    if (connecting_ && n > 0) {
      auto r = send_some(fd_, early, n);
      if (r > 0) {
        sent = static_cast<std::size_t>(r);
        connecting_ = false;
        update_interest();
      } else {
        int e = last_socket_error();
        if (!would_block(e) && e != EINTR && e != ENOTCONN) {
          error = system_error_code(e);
          close(false);
          return io_status::failed;
        }
      }
    }
    return connecting_ ? io_status::pending : io_status::done;
  }

  // Bytes (> 0), the end of the stream (0), or nothing for now / a failure (-1).
  read_result read(char* into, std::size_t n, std::error_code& error) { return receive(into, n, error); }

#if defined(__linux__)
  // splice(2) into a pipe, with read()'s outcomes. A short splice does not prove
  // the socket drained (the pipe may run out of slots first), so the connection
  // stays readable until a splice finds nothing.
  read_result read_into(kernel_pipe& pipe, std::error_code& error) {
    if (at_end_) return 0;
    for (;;) {
      ssize_t r = ::splice(fd_, nullptr, pipe.write, nullptr, pipe.capacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) return r;
      if (int k = read_returned(r, r == 0 ? 0 : errno, error); k <= 0) return k;
    }
  }
  // Moves `n` bytes from the pipe to the socket, with write()'s outcomes.
  io_status write_from(kernel_pipe& pipe, std::uint32_t n, std::size_t& written, std::error_code& error) {
    written = 0;
    while (written < n) {
      ssize_t r = ::splice(pipe.read, nullptr, fd_, nullptr, n - written, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) {
        written += static_cast<std::size_t>(r);
        continue;
      }
      int e = r == 0 ? EPIPE : errno;
      if (would_block(e)) {
        out_pipe_ = pipe.read;
        return write_later(nullptr, n - written);
      }
      if (e == EINTR) continue;
      error = system_error_code(e);
      return io_status::failed;
    }
    return io_status::done;
  }
#endif

  void on_io(unsigned events) override {
    if (events & io_error) failed_ = true;
    if (events & io_peer_closed) peer_closed_ = true;
    if (events & (io_read | io_error | io_peer_closed)) readable_ = true;
    if (connecting_) {
      if (!(events & (io_write | io_error))) return;
      connecting_ = false;
      update_interest();
      // Writable without an error means connected; only an error needs asking for.
      std::error_code e;
      if (failed_) e = pending_socket_error(fd_);
      failed_ = false;
      return owner_->on_connected(*this, e);
    }
    if (writing() && (events & (io_write | io_error))) {
      go_on_writing();
      if (fd_ == invalid_socket) return;
    }
    if (readable_ && want_read_) owner_->on_readable(*this);
  }

 private:
  friend class connection_core<connection>;

  unsigned interest_now() const noexcept {
    return (want_read_ && !connecting_ ? io_read : 0u) | (connecting_ || writing() ? io_write : 0u);
  }
  // Only a level-triggered poller needs to be told what changed.
  void update_interest() {
    if (!poller::edge_triggered && fd_ != invalid_socket) loop_.interest(fd_, this, interest_now());
  }
  // With edge-triggered readiness a short read means "drained". If the peer's FIN
  // had already arrived, nothing can follow: the next read is the end of the
  // stream, without a system call. A pending error (a reset behind the data)
  // raises no further event, so it stays readable until a read reports it.
  void short_read() noexcept {
    if (failed_) return;
    if (peer_closed_) at_end_ = true;
    else readable_ = false;
  }
  io_status write_later(const char* rest, std::size_t n) {
    keep_rest(rest, n);
    update_interest();
    return io_status::pending;
  }
  void forget_writes() noexcept { out_pipe_ = -1; }
  void go_on_writing() {
    while (out_left_ > 0) {
      ssize_t r;
#if defined(__linux__)
      if (out_pipe_ >= 0) r = ::splice(out_pipe_, nullptr, fd_, nullptr, out_left_, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      else
#endif
        r = send_some(fd_, out_, out_left_);
      if (r > 0) {
        if (out_pipe_ < 0) out_ += r;
        out_left_ -= static_cast<std::uint32_t>(r);
        out_done_ += static_cast<std::uint32_t>(r);
        continue;
      }
      int e = r == 0 ? EPIPE : last_socket_error();
      if (would_block(e)) return;
      if (e == EINTR) continue;
      return wrote(system_error_code(e));
    }
    wrote({});
  }

};

// A listening socket on a readiness loop: each readiness accepts every pending
// connection and hands it to `on_accept` (non-blocking, no Nagle). Out of
// descriptors or memory it pauses (acceptor_base::starving): a level-triggered
// poller would otherwise spin on the connection it cannot take.
class acceptor final : public acceptor_base {
 public:
  acceptor(reactor& loop, const logger& log) : acceptor_base(loop, log) {
    retry_.fire = [this] {
      if (paused_) return;  // resume() takes over
      loop_.interest(fd_, this, io_read);
      accept_all();
    };
  }
  ~acceptor() { close(); }

  // Takes the listener over.
  std::error_code open(socket_handle listener) {
    if (auto e = loop_.add(listener, this, io_read)) return e;
    fd_ = listener;
    return {};
  }

  // Closes the listener after taking in what waits in its backlog, even past admit():
  // closing would reset those clients, whose connect has succeeded already.
  void close_after_backlog() {
    while (fd_ != invalid_socket) {
      address peer;
      socket_handle s = accept_one(fd_, peer);
      if (s == invalid_socket) {
        int e = last_socket_error();
        if (e == EINTR || e == ECONNABORTED) continue;
        break;  // empty, or out of descriptors: what is left is lost with the listener
      }
      if (on_accept) on_accept(s, peer);
      else close_socket(s);
    }
    close();
    paused_ = false;  // the next listener starts afresh; admit() pauses it again if need be
  }

  // Accepts again after admit() said no; on the loop's thread.
  void resume() {
    if (!paused_ || fd_ == invalid_socket) return;
    paused_ = false;
    if (retry_.armed()) return;  // still starved: the retry resumes
    loop_.interest(fd_, this, io_read);
    accept_all();
  }

 private:
  void on_io(unsigned) override { accept_all(); }
  void accept_all() {
    while (fd_ != invalid_socket) {
      if (admit && !admit()) {
        paused_ = true;
        loop_.interest(fd_, this, 0);
        return;
      }
      address peer;
      socket_handle s = accept_one(fd_, peer);
      if (s == invalid_socket) {
        int e = last_socket_error();
        if (would_block(e)) return fed();  // a descriptor was there to take one
        if (e == EINTR || e == ECONNABORTED) continue;
        loop_.interest(fd_, this, 0);
        return starving(system_error_code(e));
      }
      fed();
      if (on_accept) on_accept(s, peer);
      else close_socket(s);
    }
  }
};

}  // namespace detail
}  // namespace harmony
#endif  // !HARMONY_USE_IOCP

#if defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>iocp  the connection and the acceptor of the completion engine (Windows)
// Reads are readiness here too: while the owner wants to read, one zero-byte
// WSARecv waits in the port and its completion makes the connection readable;
// the bytes are then read with plain non-blocking recv. Writes are completions:
// what a plain send does not take at once goes out as an overlapped WSASend of
// the owner's bytes, and its completion tells the owner. Connects are ConnectEx.
// The kernel owns an operation until its completion is dequeued, so a closed
// connection is released only when all of its group's operations are back.
class connection final : public connection_core<connection> {
 public:
  explicit connection(reactor& loop) : connection_core(loop) {}
  ~connection() { close(false); }

  // Counts this connection's operations with `leader`'s, whose release waits for both.
  void share_release_with(connection& leader) noexcept { iocp.group = &leader; }

  // ConnectEx takes no part of the early bytes here: they go once it completes.
  // Even a connect that fails at once comes back as a completion (pending).
  io_status connect(const address& to, const char*, std::size_t, std::size_t& sent, std::error_code& error) {
    sent = 0;
    socket_handle s = invalid_socket;
    bool done = false;
    if ((error = begin_connect(to, s, done))) return io_status::failed;
    start(s);
    connecting_ = true;
    if ((error = loop_.add(fd_, this, 0))) {
      abandon(error);
      return io_status::failed;
    }
    loop_.engine().connect(fd_, this, to);
    return io_status::pending;
  }

  read_result read(char* into, std::size_t n, std::error_code& error) {
    // A failed probe carries the socket's error, which plain calls might never report again.
    if (probe_error_) {
      error = system_error_code(probe_error_);
      probe_error_ = 0;
      return -1;
    }
    return receive(into, n, error);
  }

  void on_complete(io_op& op, int error, std::uint32_t bytes) override {
    switch (op.kind) {
      case op_probe:
        if (error) probe_error_ = error;
        readable_ = true;
        if (want_read_) owner_->on_readable(*this);
        return;
      case op_connect:
        connecting_ = false;
        if (!error) update_interest();
        return owner_->on_connected(*this, error ? system_error_code(error) : std::error_code{});
      case op_send:
        if (!error && bytes == 0) error = WSAECONNRESET;  // a send that moved nothing cannot go on
        if (error) return wrote(system_error_code(error));
        out_ += bytes;
        out_left_ -= std::min<std::uint32_t>(bytes, out_left_);
        out_done_ += bytes;
        if (out_left_ > 0) return loop_.engine().send(fd_, this, out_, out_left_);  // completed short: the rest
        return wrote({});
      default: return;
    }
  }

 private:
  friend class connection_core<connection>;

  void start(socket_handle s) {
    connection_core::start(s);
    probe_error_ = 0;
  }
  unsigned interest_now() const noexcept { return want_read_ && !connecting_ ? io_read : 0u; }
  void update_interest() {
    if (fd_ != invalid_socket) loop_.interest(fd_, this, interest_now());
  }
  void short_read() noexcept { readable_ = false; }  // the next probe says when there is more
  io_status write_later(const char* rest, std::size_t n) {
    keep_rest(rest, n);
    loop_.engine().send(fd_, this, out_, out_left_);
    return io_status::pending;
  }
  void forget_writes() noexcept {}

  int probe_error_ = 0;
};

// A listening socket on the completion engine. A few AcceptEx wait at once, so
// that a burst of connections is taken in one turn; each accepted socket is
// handed to `on_accept` ready for use (accept context set, non-blocking, no
// Nagle). Its operations are heap memory that is left alone, not freed, if the
// acceptor goes while some are still in flight: the owner settles the loop first.
class acceptor final : public acceptor_base {
 public:
  acceptor(reactor& loop, const logger& log) : acceptor_base(loop, log), ops_(new accept_op[in_flight]) {
    retry_.fire = [this] { start(); };
  }
  ~acceptor() {
    close();
    if (iocp.outstanding > 0) {
      ops_.release();
      return;
    }
    for (int i = 0; i < in_flight; ++i)
      if (ops_[i].accepted != invalid_socket) close_socket(ops_[i].accepted);
    for (const held& h : held_) close_socket(h.s);
  }

  // Takes the listener over; the accepts are issued from the loop's own thread.
  std::error_code open(socket_handle listener) {
    address bound;
    if (auto e = local_address(listener, bound)) return e;
    family_ = bound.family();
    if (auto e = loop_.add(listener, this, 0)) return e;
    fd_ = listener;
    loop_.post([this] { start(); });
    return {};
  }

  // Accepts again after admit() said no; on the loop's thread.
  void resume() {
    if (!paused_) return;
    paused_ = false;
    while (!held_.empty()) {
      if (admit && !admit()) {
        paused_ = true;
        return;
      }
      held h = held_.front();
      held_.erase(held_.begin());
      hand_over(h.s, h.peer);
    }
    if (!retry_.armed()) start();
  }

 private:
  static constexpr int in_flight = 8;
  // Accepts posted before admit() said no complete all the same: those are held here,
  // taken in but not served, as a readiness listener leaves them in the backlog.
  struct held {
    socket_handle s;
    address peer;
  };
  std::vector<held> held_;

  void hand_over(socket_handle s, const address& peer) {
    if (on_accept) on_accept(s, peer);
    else close_socket(s);
  }

  void on_complete(io_op& done, int error, std::uint32_t) override {
    accept_op& op = static_cast<accept_op&>(done);
    socket_handle s = op.accepted;
    op.accepted = invalid_socket;
    address peer;
    peer.length = sizeof peer.storage;
    if (!error && ::setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, reinterpret_cast<const char*>(&fd_),
                               sizeof fd_) != 0)
      error = last_socket_error();
    if (!error && ::getpeername(s, peer.get(), &peer.length) != 0) error = last_socket_error();
    if (error) {
      // A client that reset before it was taken in is no reason to stop accepting.
      close_socket(s);
      log_(log_level::debug, "accept failed: %s", system_error_code(error).message().c_str());
    } else {
      fed();
      set_nodelay(s);
      if (admit && !admit()) {
        held_.push_back(held{s, peer});
        paused_ = true;
        return;
      }
      hand_over(s, peer);
    }
    start();
  }
  // Posts the accepts that are not in flight, while admit() allows (those in flight
  // may still complete beyond it).
  void start() {
    if (paused_ || retry_.armed()) return;
    for (int i = 0; i < in_flight && fd_ != invalid_socket; ++i) {
      accept_op& op = ops_[i];
      if (op.accepted != invalid_socket) continue;  // in flight
      if (admit && !admit()) {
        paused_ = true;
        return;
      }
      // Out of sockets or memory: try again in a moment instead of spinning.
      if (std::error_code e = loop_.engine().accept(fd_, this, op, family_)) return starving(e);
    }
  }

  std::unique_ptr<accept_op[]> ops_;
  int family_ = AF_INET;
};

}  // namespace detail
}  // namespace harmony
#endif  // HARMONY_USE_IOCP

namespace harmony {
namespace detail {

// >>stream  a buffered byte stream on a connection, for the admin port and the agent
// Read callbacks, queued writes, graceful or immediate close. Bytes written while
// a write is going on wait in a second string, so the bytes the connection is
// sending never move. A stream is released through reactor::retire(connection()),
// so a callback may close (and so release) its own stream.
class stream final : public connection_owner {
 public:
  std::function<void(std::string_view)> on_data;
  std::function<void(std::error_code)> on_connect;  // outgoing streams: once, error or success
  std::function<void(std::error_code)> on_close;    // once: empty code on a clean EOF

  explicit stream(reactor& loop) : conn_(loop) { conn_.set_owner(this); }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  bool is_open() const noexcept { return conn_.is_open(); }
  connection& socket() noexcept { return conn_; }
  // Bytes accepted by write() and not yet handed to the system.
  std::size_t pending() const noexcept { return queued_.size() + sending_.size(); }

  // Takes an accepted socket (closed on failure).
  std::error_code attach(socket_handle fd) {
    reset_state();
    if (auto e = conn_.adopt(fd)) return e;
    conn_.want_read(true);
    return {};
  }

  std::error_code connect(const address& to) {
    reset_state();
    std::size_t sent = 0;
    std::error_code e;
    io_status s = conn_.connect(to, nullptr, 0, sent, e);
    if (s == io_status::failed) return e;
    conn_.want_read(true);
    if (s == io_status::done && on_connect) on_connect({});
    return {};
  }

  void write(std::string_view bytes) {
    if (!conn_.is_open() || closing_) return;
    queued_.append(bytes.data(), bytes.size());
    flush();
  }

  // Sends what is queued and a FIN, then waits for the peer's FIN and closes.
  // on_close follows when that completes later, not when it completes at once.
  void finish() {
    if (!conn_.is_open() || closing_) return;
    closing_ = true;
    finishing_ = true;
    flush();
    if (draining_ && conn_.is_open()) read_all();
    finishing_ = false;
  }

  // Closes now, with a reset when `reset`. No callback follows.
  void close(bool reset = false) { conn_.close(reset); }

 private:
  void on_connected(connection&, std::error_code e) override {
    if (e) {
      close();
      if (on_connect) on_connect(e);
      return;
    }
    if (on_connect) on_connect({});
    if (conn_.is_open()) flush();
  }
  void on_readable(connection&) override { read_all(); }
  void on_written(connection&, std::size_t, std::error_code e) override {
    if (e) return hang_up(e);
    sending_.clear();
    flush();
  }

  void reset_state() {
    close();
    queued_.clear();
    sending_.clear();
    closing_ = draining_ = false;
  }

  void flush() {
    if (!conn_.is_open() || conn_.connecting() || conn_.writing()) return;  // on_written goes on
    while (!queued_.empty()) {
      sending_.swap(queued_);
      queued_.clear();
      std::size_t written = 0;
      std::error_code e;
      switch (conn_.write(sending_.data(), sending_.size(), written, e)) {
        case io_status::done: sending_.clear(); continue;
        case io_status::pending: return;
        case io_status::failed: return hang_up(e);
      }
    }
    if (closing_ && !draining_) {
      // FIN first, then read until the peer's FIN: closing with unread input
      // would send a reset that can destroy the replies still in flight.
      conn_.shutdown_send();
      draining_ = true;
      if (!finishing_) read_all();
    }
  }

  void read_all() {
    char buffer[4096];
    for (;;) {
      std::error_code e;
      read_result n = conn_.read(buffer, sizeof buffer, e);
      if (n > 0) {
        if (draining_) continue;
        if (on_data) on_data(std::string_view(buffer, static_cast<std::size_t>(n)));
        if (!conn_.is_open() || conn_.retired) return;
        continue;
      }
      if (n == 0 || e) return hang_up(e);
      return;
    }
  }

  void hang_up(std::error_code e) {
    close(static_cast<bool>(e));
    if (on_close && !finishing_) on_close(e);
  }

  connection conn_;
  bool closing_ = false;
  bool finishing_ = false;
  bool draining_ = false;
  std::string queued_;   // written, waiting for the write in flight
  std::string sending_;  // the write in flight: the connection points into it
};

// The connections of a port that serves streams (the admin port, the stats port):
// owned here, each freed after the loop turn in which it closed (reactor::retire).
// The port closes them and settles its loop before this goes.
template <class Connection>
class stream_set {
 public:
  explicit stream_set(reactor& loop) : loop_(loop) {}
  template <class... Args>
  Connection* add(Args&&... args) {
    auto c = std::make_unique<Connection>(std::forward<Args>(args)...);
    Connection* raw = c.get();
    items_.emplace(raw, std::move(c));
    return raw;
  }
  void release(Connection* c) {
    loop_.retire(c->io.socket(), [this, c] { items_.erase(c); });
  }
  void close_all() {
    for (auto& c : items_) c.second->io.close();
  }
  // Calls f on each; f may end (release) the one it is given.
  template <class F>
  void each(F f) {
    for (auto& c : items_) f(*c.second);
  }
  std::size_t size() const noexcept { return items_.size(); }

 private:
  reactor& loop_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> items_;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {

struct rejected_access {
  static void set_peer(rejected_connection& c, std::string peer) { c.peer_ = std::move(peer); }
  static std::string& reply(rejected_connection& c) { return c.reply_; }
};

namespace detail {

// >>pump  the proxy core: two connections, both directions, backpressure, half-close
// What a proxied connection reads of the server's options, taken once.
struct relay_settings {
  std::int64_t connect_timeout_ms = 0;
  std::int64_t idle_timeout_ms = 0;
  std::int64_t queue_timeout_ms = 0;
  std::size_t queue_limit = 0;
  int requeue = 0;
  bool accept_proxy = false;
  std::string unavailable;
  std::function<void(std::error_code, rejected_connection&)> on_unavailable;
  std::function<void(const std::string&, std::error_code)> on_backend_error;
  std::function<void(const access_entry&)> on_access;

  static relay_settings from(const server_options& o) {
    relay_settings s;
    s.connect_timeout_ms = o.connect_timeout.count();
    s.idle_timeout_ms = o.idle_timeout.count();
    s.queue_timeout_ms = o.queue_timeout.count();
    s.queue_limit = o.queue_limit;
    s.requeue = o.requeue;
    s.accept_proxy = o.accept_proxy;
    s.unavailable = o.unavailable;
    s.on_unavailable = o.on_unavailable;
    s.on_backend_error = o.on_backend_error;
    s.on_access = o.on_access;
    return s;
  }
};

struct relay_counters {
  std::atomic<std::uint64_t> accepted{0}, active{0}, unavailable{0}, connect_failures{0}, bytes_in{0},
      bytes_out{0}, bytes_spliced{0}, bad_proxy_headers{0};
};

class session;

// What a session needs of the server around it, and no more: the loop and its
// buffers, the settings, the backend table (pick and release), the concurrency
// slots and the wait queue, the counters and the log. The worker provides it.
class session_host {
 public:
  virtual reactor& loop() noexcept = 0;
  virtual buffer_pool& pool() noexcept = 0;
#if defined(__linux__)
  // The loop's splice pipes, or null where this loop may not splice.
  virtual pipe_pool* pipes() noexcept = 0;
#endif
  virtual const relay_settings& settings() const noexcept = 0;
  virtual const logger& log() const noexcept = 0;
  virtual relay_counters& counters() noexcept = 0;
  // Chooses a backend for a client (by its address key), skipping the leases in
  // `tried`, and counts the connection against it.
  virtual bool pick(std::string_view client_key, const std::vector<lease>& tried, pick_result& out) = 0;
  // Ends a connection's count against its backend, with the bytes it moved.
  virtual void release(const lease& backend, bool failed, std::uint64_t bytes_in = 0, std::uint64_t bytes_out = 0) = 0;
  // What an attempt on a backend came to, for its health (>>health); `trial` when
  // the pick said it was the backend's trial.
  virtual void report(const lease& backend, attempt_outcome what, bool trial, std::string_view why) = 0;
  // Counts the client address against max_conns_per_client (`counted`: while one is
  // in force); false (counted and logged as refused) when it has as many open already.
  virtual bool take_client_address(const address& peer, bool& counted) = 0;
  // The client connection has ended (the connection limits count it); `peer` was
  // counted by take_client_address when `address_counted`.
  virtual void client_ended(const address& peer, bool address_counted) = 0;
  // A connection that should have begun with a PROXY header did not (accept_proxy).
  virtual void bad_proxy_header(const address& from, const char* why) = 0;
  virtual std::string backend_id(const lease& backend) = 0;
  // One proxied connection under the concurrency limit.
  virtual bool take_slot() = 0;
  virtual void give_slot() = 0;
  // The wait queue for a slot: false when it is full.
  virtual bool wait_for_slot(session& s) = 0;
  // Every backend that could serve is at its maxconn: gives back the session's slot
  // and queues it until a release makes room, at the head with its first wait time
  // when `keep_place` (it was queued before); false when the queue is full.
  virtual bool wait_for_backend(session& s, bool keep_place) = 0;
  virtual void stop_waiting(session& s) = 0;
  // The session has ended and may serve the next client.
  virtual void recycle(session& s) = 0;

 protected:
  ~session_host() = default;
};

// The requeue window of one connection. Until the backend sends its first byte,
// what the client sent stays in the upstream buffer, so that a backend that fails
// can be replaced and the same bytes sent to the next one. The window closes for
// good at the backend's first byte, or when the client's bytes outgrow the buffer.
class replay_window {
 public:
  void reset() noexcept { open_ = true; }
  bool is_open() const noexcept { return open_; }
  void backend_answered() noexcept { open_ = false; }
  // After the buffered bytes went out: whether they must stay for a replay.
  bool keep(std::size_t buffered, std::size_t capacity) noexcept {
    if (open_ && buffered < capacity) return true;
    open_ = false;
    return false;
  }
  // A backend that breaks may be replaced while the client has lost nothing:
  // the window is open and the backend has sent neither a byte nor a FIN.
  bool may_replay(std::uint64_t received_from_backend, bool backend_finished) const noexcept {
    return open_ && received_from_backend == 0 && !backend_finished;
  }

 private:
  bool open_ = true;
};

// A proxied connection: the client connection, the backend connection and one
// buffer per direction. A direction reads its source only when its buffer is
// empty and no write to its destination is going on, so a slow reader holds back
// its writer (backpressure); it passes EOF on as a FIN only once everything read
// has been written (half-close); an error on either side resets the other
// (reset propagation). Buffers come from the pool only while data is in flight,
// so an idle connection costs no buffer at all.
class session final : public connection_owner {
 public:
  // greeting: reading the PROXY header an upstream proxy sends first (accept_proxy).
  // passing_reset: one side failed; what it sent before still goes to the
  // other side, and the reset follows it there.
  enum class phase { idle, greeting, queued, connecting, retrying, relaying, passing_reset, farewell };

  explicit session(session_host& host) : host_(host), client_(host.loop()), backend_(host.loop()) {
    client_.set_owner(this);
    backend_.set_owner(this);
    backend_.share_release_with(client_);  // released when both sides' operations are back
    clock_.fire = [this] { on_clock(); };
  }
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  // Serves an accepted client socket: waits for a slot, or starts at once.
  void start(socket_handle fd, const address& peer);
  // Leaves the wait queue with a slot taken for it.
  void admitted();
  // Ends the connection now: used by shutdown of the whole server, too.
  void close(bool reset);

  phase current_phase() const noexcept { return phase_; }
  wait_hook<session> waiting;  // its place in the wait queue for a slot (>>wait-queue)

 private:
  struct direction {
    char* data = nullptr;
    std::uint32_t begin = 0;
    std::uint32_t end = 0;
    bool large = false;  // data is a large buffer
    bool bulk = false;   // the next buffer taken is large
    bool eof = false;    // the source sent its FIN
    bool shut = false;   // the FIN went on to the destination
    kernel_pipe pipe;          // borrowed while a streaming direction has bytes in the kernel
    std::uint32_t piped = 0;   // bytes in the pipe, read and not yet written
    bool holds_bytes() const noexcept { return piped > 0 || begin < end; }
  };

  void on_connected(connection& c, std::error_code error) override;
  void on_readable(connection& c) override;
  void on_written(connection& c, std::size_t bytes, std::error_code error) override;

  void begin();
  void read_greeting();
  void refuse_greeting(const char* why);
  void start_attempt();
  void wait_for_backend();
  void connected();
  bool read_ahead();
  void attempt_failed(std::error_code why);
  void unavailable(std::error_code why);
  void on_clock();
  void pump();
  bool flow(direction& d, connection& src, connection& dst);
  io_status send_held(direction& d, connection& dst, std::error_code& error);
  bool fill(direction& d, connection& src);
  void fail(connection& where, std::error_code error);
  void pass_reset();
  void farewell_pump();
  void release_buffers();
  void took_in(const connection& src, std::size_t n);
  void report(attempt_outcome what, std::string_view why = {});
  void put_out(const connection& dst, std::size_t n);
  io_status send_header(connection& dst, std::error_code& error);
  const proxy_addresses& ends();
  void ending(const char* how, std::string reason = {});
  void log_access();
  direction& towards(const connection& dst) noexcept { return &dst == &backend_ ? up_ : down_; }
  std::string client_text() const { return peer_.to_endpoint().to_string(); }

  session_host& host_;
  connection client_;
  connection backend_;
  direction up_;    // client to backend
  direction down_;  // backend to client
  phase phase_ = phase::idle;
  lease current_;
  std::vector<lease> tried_;
  int attempts_ = 0;
  bool holds_slot_ = false;
  bool queued_before_ = false;
  bool connected_ = false;  // the current attempt's connect went through
  bool trial_ = false;      // the current attempt is its backend's trial
  bool watch_ = false;      // the current attempt's outcome is still to be reported  // it has waited in the queue: waiting.since is when it began
  address peer_;
  timer clock_;
  std::int64_t last_activity_ = 0;
  std::uint64_t sent_to_backend_ = 0;
  std::uint64_t received_from_backend_ = 0;
  std::uint64_t spliced_ = 0;
  replay_window replay_;
  std::uint8_t reset_polls_ = 0;  // passing_reset: how often the other kernel was asked
  std::string farewell_;
  std::size_t farewell_sent_ = 0;
  // PROXY protocol: the client's and the listener's addresses (from an upstream
  // header, or the connection's own, found when first needed), and the bytes of a
  // header: what arrived of an upstream's (greeting), later the one the current
  // backend is sent ahead of the client's bytes, with what is left of it to send.
  proxy_addresses ends_;
  bool ends_known_ = false;
  bool address_counted_ = false;  // take_client_address counted peer_
  std::uint32_t header_left_ = 0;
  std::string header_;
  // How it ended, set by whatever ends it (null: the server stopped), and for the
  // access log (on_access only) what else it must tell.
  const char* end_ = nullptr;
  struct journal {
    std::int64_t accepted_at = 0;
    std::string via;
    std::vector<std::string> tried;
    std::string reason;
    resolved_address to;  // the current attempt's backend
    std::int64_t queued_ms = 0;
  };
  std::unique_ptr<journal> journal_;  // kept for the next client, like the strings above
  bool journaling_ = false;
};

inline void session::start(socket_handle fd, const address& peer) {
  up_ = direction{};
  down_ = direction{};
  current_ = lease{};
  tried_.clear();
  attempts_ = 0;
  holds_slot_ = false;
  queued_before_ = false;
  peer_ = peer;
  sent_to_backend_ = received_from_backend_ = spliced_ = 0;
  replay_.reset();
  farewell_.clear();
  farewell_sent_ = 0;
  header_left_ = 0;
  ends_known_ = address_counted_ = false;
  end_ = nullptr;
  const relay_settings& settings = host_.settings();
  journaling_ = static_cast<bool>(settings.on_access);
  if (journaling_) {
    if (!journal_) journal_ = std::make_unique<journal>();
    journal_->via.clear();
    journal_->tried.clear();
    journal_->reason.clear();
    journal_->to = resolved_address{};
    journal_->queued_ms = 0;
    journal_->accepted_at = host_.loop().now();
  }
  reactor& loop = host_.loop();
  last_activity_ = loop.now();
  phase_ = phase::connecting;  // owns resources from here on: close() gives them back
  if (std::error_code e = client_.adopt(fd)) {
    host_.log()(log_level::error, "cannot watch the connection from %s: %s", client_text().c_str(),
                e.message().c_str());
    ending("error", e.message());
    return close(true);
  }
  if (!settings.accept_proxy) return begin();
  phase_ = phase::greeting;
  header_.clear();
  loop.schedule(clock_, loop.now() + settings.connect_timeout_ms);
  client_.want_read(true);
  read_greeting();  // it has often arrived with the accept
}

// Once the client's address is known: counts it, then waits for a slot or starts.
inline void session::begin() {
  if (!host_.take_client_address(peer_, address_counted_)) {
    ending("refused");
    return close(false);
  }
  reactor& loop = host_.loop();
  if (host_.take_slot()) {
    holds_slot_ = true;
    return start_attempt();
  }
  if (!host_.wait_for_slot(*this)) return unavailable(make_error_code(errc::queue_full));
  queued_before_ = true;
  phase_ = phase::queued;
  loop.schedule(clock_, loop.now() + host_.settings().queue_timeout_ms);
}

// The backends are all at their maxconn: wait for one to make room, within the
// queue's bounds, counting the time already waited for a slot.
inline void session::wait_for_backend() {
  holds_slot_ = false;  // the host takes it back
  if (!host_.wait_for_backend(*this, queued_before_)) return unavailable(make_error_code(errc::queue_full));
  queued_before_ = true;
  phase_ = phase::queued;
  reactor& loop = host_.loop();
  loop.schedule(clock_, waiting.since + host_.settings().queue_timeout_ms);
}

inline void session::admitted() {
  reactor& loop = host_.loop();
  loop.cancel(clock_);
  if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
  holds_slot_ = true;
  start_attempt();
}

// Reads the upstream proxy's header: never past its end where its length shows (v2),
// and for v1 at most to the longest header, so that what follows it, the client's
// first bytes, fits the first relay buffer (check() asks buffer_bytes >= proxy_v1_max).
inline void session::read_greeting() {
  static constexpr std::size_t shortest = 15;  // "PROXY UNKNOWN\r\n"
  const std::string_view signature(proxy_v2_signature, sizeof proxy_v2_signature);
  for (;;) {
    proxy_parse p = parse_proxy_header(header_);
    if (p.result == proxy_parse::status::invalid) return refuse_greeting(p.why);
    if (p.result == proxy_parse::status::done) {
      host_.loop().cancel(clock_);
      client_.want_read(false);
      if (!p.addresses.local) {  // LOCAL and UNKNOWN: the connection's own addresses stand
        if (journaling_) journal_->via = client_text();
        ends_ = p.addresses;
        ends_known_ = true;
        peer_ = to_os_address(p.addresses.source);
      }
      if (std::size_t rest = header_.size() - p.consumed) {
        up_.data = host_.pool().take(false);
        std::memcpy(up_.data, header_.data() + p.consumed, rest);
        up_.end = static_cast<std::uint32_t>(rest);
      }
      header_.clear();
      return begin();
    }
    std::size_t have = header_.size(), want;
    if (have < shortest) want = shortest - have;
    else if (header_.compare(0, std::min(have, signature.size()), signature.substr(0, std::min(have, signature.size()))) != 0)
      want = proxy_v1_max - have;
    else if (have < proxy_v2_fixed) want = proxy_v2_fixed - have;
    else want = proxy_v2_fixed + ((std::size_t{static_cast<unsigned char>(header_[14])} << 8) |
                                  static_cast<unsigned char>(header_[15])) - have;
    header_.resize(have + want);
    std::error_code e;
    read_result n = client_.read(&header_[have], want, e);
    header_.resize(have + static_cast<std::size_t>(n > 0 ? n : 0));
    if (n > 0) continue;
    if (n == 0) return refuse_greeting("closed before its PROXY header ended");
    if (!e) return;  // the rest comes with the next readable event
    ending("client-reset", e.message());
    return close(true);
  }
}

inline void session::refuse_greeting(const char* why) {
  host_.bad_proxy_header(peer_, why);
  ending("bad-proxy-header", why);
  close(true);
}

inline void session::start_attempt() {
  reactor& loop = host_.loop();
  pick_result pick;
  std::string key = peer_.host_key();
  if (!host_.pick(key, tried_, pick)) {
    if (pick.full) return wait_for_backend();
    return unavailable(make_error_code(attempts_ ? errc::attempts_exhausted : errc::no_backend));
  }
  current_ = pick.chosen;
  connected_ = false;
  trial_ = pick.trial;
  watch_ = pick.watch || pick.trial;
  phase_ = phase::connecting;
  if (journaling_) journal_->to = pick.to;
  header_left_ = 0;
  if (pick.proxy != proxy_protocol::none) {
    header_ = encode_proxy_header(pick.proxy, ends());
    header_left_ = static_cast<std::uint32_t>(header_.size());
  }
  if (attempts_ == 0 && !up_.data && !up_.eof && !read_ahead()) return;
  std::size_t sent = 0;
  std::error_code e;
  address to = to_os_address(pick.to);
  // The PROXY header goes first, with the connect; the client's bytes follow it.
  const char* early = header_left_ ? header_.data() : up_.data + up_.begin;
  std::size_t early_size = header_left_ ? header_.size() : up_.end - up_.begin;
  switch (backend_.connect(to, early, early_size, sent, e)) {
    case io_status::failed: return attempt_failed(e);
    case io_status::done:
      if (header_left_) {
        header_left_ -= static_cast<std::uint32_t>(sent);
      } else {
        up_.begin += static_cast<std::uint32_t>(sent);
        put_out(backend_, sent);
      }
      return connected();
    case io_status::pending: break;
  }
  loop.schedule(clock_, loop.now() + host_.settings().connect_timeout_ms);
}

// A client has usually sent its first bytes by the time it is accepted, and a
// connect over loopback or a LAN has often completed when connect() returns.
// Reading before the connect and writing with it saves the two loop turns that
// would wait for those events; where a guess is wrong, the events take over.
// False when the connection has ended.
inline bool session::read_ahead() {
  buffer_pool& pool = host_.pool();
  char* buffer = pool.take(false);
  std::error_code e;
  read_result n = client_.read(buffer, pool.size(false), e);
  if (n > 0) {
    up_.data = buffer;
    up_.end = static_cast<std::uint32_t>(n);
    took_in(client_, static_cast<std::size_t>(n));
    if (static_cast<std::size_t>(n) == pool.size(false)) up_.bulk = true;  // more may follow
    return true;
  }
  pool.give(buffer, false);
  if (n == 0) up_.eof = true;
  if (!e) return true;
  ending("client-reset", e.message());
  close(true);  // the client is gone already
  return false;
}

inline void session::connected() {
  reactor& loop = host_.loop();
  connected_ = true;
  phase_ = phase::relaying;
  last_activity_ = loop.now();
  loop.cancel(clock_);
  if (host_.settings().idle_timeout_ms > 0) loop.schedule(clock_, last_activity_ + host_.settings().idle_timeout_ms);
  pump();
}

inline void session::on_connected(connection&, std::error_code error) {
  if (phase_ != phase::connecting) return;
  if (error) return attempt_failed(error);
  host_.loop().cancel(clock_);
  connected();
}

inline void session::on_readable(connection&) {
  if (phase_ == phase::relaying) return pump();
  if (phase_ == phase::greeting) return read_greeting();
  if (phase_ == phase::farewell) return farewell_pump();
}

inline void session::on_written(connection& c, std::size_t bytes, std::error_code error) {
  if (phase_ == phase::farewell) {
    if (error) return close(true);
    farewell_sent_ += bytes;
    return farewell_pump();
  }
  if (&c == &backend_ && header_left_ > 0) {
    header_left_ -= static_cast<std::uint32_t>(std::min<std::size_t>(bytes, header_left_));
  } else {
    direction& d = towards(c);
    if (d.piped) {
      d.piped -= static_cast<std::uint32_t>(bytes);
      spliced_ += bytes;
    } else {
      d.begin += static_cast<std::uint32_t>(bytes);
    }
    put_out(c, bytes);
  }
  if (phase_ == phase::passing_reset) return error ? close(true) : pass_reset();
  if (error) return fail(c, error);
  if (phase_ == phase::relaying) pump();
}

// A failed attempt is retried from a timer, after this loop turn: any stale event
// of the closed socket is then gone and cannot be mistaken for the new one.
inline void session::attempt_failed(std::error_code why) {
  reactor& loop = host_.loop();
  const relay_settings& settings = host_.settings();
  host_.counters().connect_failures.fetch_add(1, std::memory_order_relaxed);
  std::string id = host_.backend_id(current_);
  host_.log()(log_level::warn, "backend %s failed for %s: %s", id.c_str(), client_text().c_str(),
              why.message().c_str());
  if (settings.on_backend_error) settings.on_backend_error(id, why);
  // A failure of this host (out of descriptors or memory for the socket) says
  // nothing of the backend: it must not take a healthy backend out of rotation.
  bool ours = is_local_resource_error(why);
  if (!ours) watch_ = true;  // every failure of the backend counts; a trial of ours is abandoned
  report(ours ? attempt_outcome::abandoned : attempt_outcome::failed, why.message());
  host_.release(current_, !ours);
  if (journaling_) journal_->tried.push_back(to_os_address(journal_->to).to_endpoint().to_string());
  tried_.push_back(current_);
  current_ = lease{};
  backend_.close(false);
  client_.want_read(false);  // until the next backend is connected
  // The next backend gets everything the failed one was sent, from the start.
  up_.begin = 0;
  up_.shut = false;
  sent_to_backend_ = 0;
  replay_.reset();
  ++attempts_;
  if (attempts_ > settings.requeue) return unavailable(make_error_code(errc::attempts_exhausted));
  phase_ = phase::retrying;
  loop.schedule(clock_, loop.now());
}

inline void session::on_clock() {
  reactor& loop = host_.loop();
  switch (phase_) {
    case phase::queued:
      host_.stop_waiting(*this);
      if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
      return unavailable(make_error_code(errc::queue_timeout));
    case phase::greeting: return refuse_greeting("no PROXY header within the connect timeout");
    case phase::retrying: return start_attempt();
    case phase::connecting: return attempt_failed(make_error_code(errc::connect_timeout));
    case phase::relaying: {
      if (host_.settings().idle_timeout_ms <= 0) return;  // no idle timeout
      std::int64_t deadline = last_activity_ + host_.settings().idle_timeout_ms;
      if (loop.now() >= deadline) {
        host_.log()(log_level::debug, "idle timeout for %s", client_text().c_str());
        ending("idle-timeout");
        return close(false);
      }
      return loop.schedule(clock_, deadline);
    }
    case phase::passing_reset: return pass_reset();
    case phase::farewell: return close(false);
    case phase::idle: return;
  }
}

inline void session::pump() {
  if (!flow(up_, client_, backend_)) return;
  bool was_replayable = replay_.is_open();
  if (!flow(down_, backend_, client_)) return;
  // The backend's first answer ends the replay window: drop the kept request now,
  // so an idle connection holds no buffer.
  if (was_replayable && !replay_.is_open() && up_.data && up_.begin == up_.end) {
    host_.pool().give(up_.data, up_.large);
    up_.data = nullptr;
    up_.begin = up_.end = 0;
  }
  if (up_.shut && down_.shut) {
    ending("closed");
    return close(false);
  }
  // A side is told of readability only while its outgoing direction may read.
  client_.want_read(!up_.eof && !up_.holds_bytes());
  backend_.want_read(!down_.eof && !down_.holds_bytes());
}

inline void session::took_in(const connection& src, std::size_t n) {
  if (&src == &backend_) {
    received_from_backend_ += n;
    replay_.backend_answered();
    if (watch_) report(attempt_outcome::answered);
  }
  last_activity_ = host_.loop().now();
}

// Tells the backend's health what the current attempt came to, once.
inline void session::report(attempt_outcome what, std::string_view why) {
  if (!watch_) return;
  watch_ = false;
  host_.report(current_, what, trial_, why);
  trial_ = false;
}

inline void session::put_out(const connection& dst, std::size_t n) {
  if (&dst == &backend_) sent_to_backend_ += n;
  last_activity_ = host_.loop().now();
}

// Writes what is left of the PROXY header; the client's bytes wait behind it.
inline io_status session::send_header(connection& dst, std::error_code& error) {
  std::size_t written = 0;
  io_status sent = dst.write(header_.data() + (header_.size() - header_left_), header_left_, written, error);
  header_left_ -= static_cast<std::uint32_t>(written);
  return sent;
}

// The client's address and the one it connected to: an upstream's header said, or
// the connection's own (an IPv4 client of a dual-stack listener as IPv4).
inline const proxy_addresses& session::ends() {
  if (!ends_known_) {
    ends_ = proxy_addresses{};
    ends_.source = unmapped(to_resolved(peer_));
    address local;
    if (!local_address(client_.handle(), local)) ends_.destination = unmapped(to_resolved(local));
    ends_known_ = true;
  }
  return ends_;
}

// The first to tell how the connection ends is right: what follows (a reset passed
// on, a farewell that cannot be written) is its consequence.
inline void session::ending(const char* how, std::string reason) {
  if (end_) return;
  end_ = how;
  if (journaling_) journal_->reason = std::move(reason);
}

inline void session::log_access() {
  access_entry e;
  e.client = client_text();
  e.via = std::move(journal_->via);
  e.tried = std::move(journal_->tried);
  if (journal_->to.valid()) e.backend = to_os_address(journal_->to).to_endpoint().to_string();
  e.bytes_in = sent_to_backend_;
  e.bytes_out = received_from_backend_;
  e.queued = duration(journal_->queued_ms);
  e.lasted = duration(host_.loop().now() - journal_->accepted_at);
  e.end = end_ ? end_ : "shutdown";
  e.reason = std::move(journal_->reason);
  host_.settings().on_access(e);
}

// Moves one direction as far as it goes now: writes what it holds, then reads
// more. False when the session has ended.
inline bool session::flow(direction& d, connection& src, connection& dst) {
  buffer_pool& pool = host_.pool();
  for (;;) {
    if (dst.writing()) return true;  // on_written goes on
    if (&d == &up_ && header_left_ > 0) {
      std::error_code e;
      io_status sent = send_header(dst, e);
      if (sent == io_status::failed) {
        fail(dst, e);
        return false;
      }
      if (sent == io_status::pending) return true;
    } else if (d.holds_bytes()) {
      std::error_code e;
      io_status sent = send_held(d, dst, e);
      if (sent == io_status::failed) {
        fail(dst, e);
        return false;
      }
      if (sent == io_status::pending) return true;
    } else {
      if (d.data && !(&d == &up_ && replay_.keep(d.end, pool.size(d.large)))) {
        pool.give(d.data, d.large);
        d.data = nullptr;
        d.begin = d.end = 0;
      }
      if (d.eof) {
        if (!d.shut) {
          // When the other way is finished too the connection is about to close,
          // and closing sends this FIN anyway.
          const direction& other = &d == &up_ ? down_ : up_;
          if (!other.shut) dst.shutdown_send();
          d.shut = true;
        }
        return true;
      }
      if (!src.readable()) return true;
      if (!fill(d, src)) return false;
    }
  }
}

// Hands what a direction holds (its buffer, or its pipe) to the destination, as
// far as the destination takes it now.
inline io_status session::send_held(direction& d, connection& dst, std::error_code& error) {
  std::size_t written = 0;
  io_status sent;
#if defined(__linux__)
  if (d.piped) {
    sent = dst.write_from(d.pipe, d.piped, written, error);
    d.piped -= static_cast<std::uint32_t>(written);
    spliced_ += written;
  } else
#endif
  {
    sent = dst.write(d.data + d.begin, d.end - d.begin, written, error);
    d.begin += static_cast<std::uint32_t>(written);
  }
  put_out(dst, written);
  return sent;
}

// Reads once from `src` into the direction: through a pipe when it streams and
// may splice, else into its buffer. False when the session has ended.
inline bool session::fill(direction& d, connection& src) {
  buffer_pool& pool = host_.pool();
  std::error_code e;
  read_result n;
#if defined(__linux__)
  // What the backend was sent stays in the buffer while it may have to be replayed.
  pipe_pool* pipes = d.bulk && !d.data && !(&d == &up_ && replay_.is_open()) ? host_.pipes() : nullptr;
  if (pipes && (d.pipe.valid() || pipes->take(d.pipe))) {
    n = src.read_into(d.pipe, e);
    if (n > 0) {
      d.piped = static_cast<std::uint32_t>(n);
      if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
      took_in(src, static_cast<std::size_t>(n));
      return true;
    }
    if (!e) pipes->give(d.pipe, true);  // nothing in flight: no pipe held
  } else
#endif
  {
    if (!d.data) d.large = d.bulk;
    char* buffer = d.data ? d.data : pool.take(d.large);
    std::size_t room = pool.size(d.large) - d.end;
    n = src.read(buffer + d.end, room, e);
    if (n > 0) {
      d.data = buffer;
      d.end += static_cast<std::uint32_t>(n);
      if (static_cast<std::size_t>(n) == room) d.bulk = true;
      else if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
      took_in(src, static_cast<std::size_t>(n));
      return true;
    }
    if (!d.data) pool.give(buffer, d.large);
  }
  if (n == 0) d.eof = true;
  if (!e) return true;
  fail(src, e);
  return false;
}

inline void session::fail(connection& where, std::error_code error) {
  // A backend that breaks before its first byte is a failed attempt: the client
  // has lost nothing (what it sent is still buffered), so another backend may serve it.
  if (&where == &backend_ && replay_.may_replay(received_from_backend_, down_.eof))
    return attempt_failed(error == std::errc::connection_reset || error == std::errc::broken_pipe
                              ? make_error_code(errc::backend_reset)
                              : error);
  host_.log()(log_level::debug, "%s side of %s failed: %s", &where == &backend_ ? "backend" : "client",
              client_text().c_str(), error.message().c_str());
  ending(&where == &backend_ ? "backend-reset" : "client-reset", error.message());
  // A reset is passed on as a reset, but only behind the bytes the failed side
  // sent before it: those still go to the other side first.
  connection& other = &where == &backend_ ? client_ : backend_;
  where.close(true);
  if (phase_ != phase::relaying || !other.is_open()) return close(true);
  phase_ = phase::passing_reset;
  other.want_read(false);
  reset_polls_ = 0;
  pass_reset();
}

// Delivers what the failed side sent, waits (briefly, bounded) until the other
// side's kernel has delivered it too, since a reset discards what it still holds,
// then resets the other side.
inline void session::pass_reset() {
  direction& d = backend_.is_open() ? up_ : down_;  // towards the side still open
  connection& dst = &d == &up_ ? backend_ : client_;
  if (&d == &up_ && header_left_ > 0 && !dst.writing()) return close(true);  // no byte may pass its header
  while (!dst.writing() && d.holds_bytes()) {
    std::error_code e;
    io_status sent = send_held(d, dst, e);
    if (sent == io_status::failed) return close(true);
    if (sent == io_status::pending) return;  // on_written goes on
  }
  if (dst.writing()) return;
  reactor& loop = host_.loop();
  // Asked again after 1, 2, 4, 8, 16 ms, then every 32 ms, for as long as the
  // connect timeout (at least a second, at most about 8 s).
  std::int64_t patience = std::max<std::int64_t>(1000, host_.settings().connect_timeout_ms);
  std::int64_t polls = std::min<std::int64_t>(255, 5 + patience / 32);
  if (dst.unsent() > 0 && reset_polls_ < polls) {
    loop.schedule(clock_, loop.now() + (std::int64_t{1} << std::min<int>(reset_polls_, 5)));
    ++reset_polls_;
    return;
  }
  close(true);
}

inline void session::unavailable(std::error_code why) {
  const relay_settings& settings = host_.settings();
  host_.counters().unavailable.fetch_add(1, std::memory_order_relaxed);
  ending("unavailable", why.message());
  if (holds_slot_) {
    holds_slot_ = false;
    host_.give_slot();
  }
  farewell_ = settings.unavailable;
  if (settings.on_unavailable) {
    rejected_connection client;
    rejected_access::set_peer(client, client_text());
    settings.on_unavailable(why, client);
    farewell_ = std::move(rejected_access::reply(client));
  }
  host_.log()(log_level::info, "unavailable for %s: %s", client_text().c_str(), why.message().c_str());
  phase_ = phase::farewell;
  farewell_sent_ = 0;
  reactor& loop = host_.loop();
  loop.schedule(clock_, loop.now() + std::max<std::int64_t>(1000, host_.settings().connect_timeout_ms));
  farewell_pump();
}

// Sends the unavailable text, then a FIN, then reads until the client's FIN, so
// that unread client bytes never turn the close into a reset that eats the text.
inline void session::farewell_pump() {
  if (client_.writing()) return;  // on_written goes on
  if (farewell_sent_ < farewell_.size()) {
    std::size_t written = 0;
    std::error_code e;
    io_status s = client_.write(farewell_.data() + farewell_sent_, farewell_.size() - farewell_sent_, written, e);
    farewell_sent_ += written;
    if (s == io_status::failed) return close(true);
    if (s == io_status::pending) return;
  }
  if (!down_.shut) {
    client_.shutdown_send();
    down_.shut = true;
    client_.want_read(true);
  }
  char sink[4096];
  for (;;) {
    std::error_code e;
    read_result n = client_.read(sink, sizeof sink, e);
    if (n > 0) continue;
    if (n == 0 || e) return close(false);
    return;
  }
}

inline void session::release_buffers() {
  for (direction* d : {&up_, &down_}) {
    if (d->data) {
      host_.pool().give(d->data, d->large);
      d->data = nullptr;
    }
#if defined(__linux__)
    if (pipe_pool* pipes = host_.pipes()) pipes->give(d->pipe, d->piped == 0);
#endif
    d->piped = 0;
  }
}

inline void session::close(bool reset) {
  if (phase_ == phase::idle) return;
  reactor& loop = host_.loop();
  loop.cancel(clock_);
  if (phase_ == phase::queued) {
    host_.stop_waiting(*this);
    if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
  }
  client_.close(reset);
  backend_.close(reset);
  bool served = current_.valid() && connected_;
  if (current_.valid()) {
    report(connected_ ? attempt_outcome::answered : attempt_outcome::abandoned);
    host_.release(current_, false, sent_to_backend_, received_from_backend_);
  }
  current_ = lease{};
  if (journaling_) {
    if (!served) journal_->to = resolved_address{};
    log_access();
  }
  relay_counters& counters = host_.counters();
  counters.bytes_in.fetch_add(sent_to_backend_, std::memory_order_relaxed);
  counters.bytes_out.fetch_add(received_from_backend_, std::memory_order_relaxed);
  counters.bytes_spliced.fetch_add(spliced_, std::memory_order_relaxed);
  counters.active.fetch_sub(1, std::memory_order_relaxed);
  host_.client_ended(peer_, address_counted_);
  phase_ = phase::idle;
  bool had_slot = holds_slot_;
  holds_slot_ = false;
  // A cancelled send may read its buffer until its completion is back.
  loop.retire(client_, [this] {
    release_buffers();
    host_.recycle(*this);
  });
  if (had_slot) host_.give_slot();
}

}  // namespace detail
}  // namespace harmony

#include <condition_variable>

namespace harmony {
namespace detail {

// >>resolver  the server's resolver thread: getaddrinfo and SRV queries off the event loops
// Every address a host name has for TCP, IPv4 and IPv6, in the resolver's order.
inline std::error_code lookup_all(const endpoint& at, std::vector<resolved_address>& out) {
  out.clear();
  if (at.host.empty()) return make_error_code(errc::resolve_failed);
  addrinfo* list = lookup_stream(at, false);
  if (!list) return make_error_code(errc::resolve_failed);
  for (addrinfo* i = list; i; i = i->ai_next) {
    if (i->ai_family != AF_INET && i->ai_family != AF_INET6) continue;
    address a;
    std::memcpy(&a.storage, i->ai_addr, std::min<std::size_t>(i->ai_addrlen, sizeof a.storage));
    a.length = static_cast<socklen_t>(i->ai_addrlen);
    out.push_back(to_resolved(a));
  }
  ::freeaddrinfo(list);
  return out.empty() ? make_error_code(errc::resolve_failed) : std::error_code{};
}

// One name to resolve, and what a resolution of it gave.
struct resolver_name {
  endpoint at;  // for SRV, the name and port 0
  int weight = default_weight;
  bool srv = false;  // an SRV name (is_srv_name): ports, weights and roles from its records
  int maxconn = 0;   // of each backend (backend_options::maxconn)
  bool backup = false;
  proxy_protocol proxy = proxy_protocol::none;
};
struct resolution {
  std::size_t index = 0;  // the name's place in the order names were given
  resolver_name name;
  std::error_code error;
  std::vector<discovered_address> addresses;
};

// How long one name server has to answer, and how many times each is asked.
inline constexpr duration dns_server_timeout{1000};
inline constexpr int dns_rounds = 2;

// An SRV query to each name server in turn (`servers`, else /etc/resolv.conf's),
// over TCP when the UDP answer is truncated. The first server that answers
// decides: a DNS error or an empty answer is a failure, not a cue to ask the next.
inline std::error_code lookup_srv(const std::string& name, const std::vector<endpoint>& servers,
                                  std::vector<discovered_address>& out) {
  out.clear();
  std::vector<endpoint> from = servers;
  if (from.empty()) {
#if !defined(_WIN32)
    std::string text;
    if (FILE* f = std::fopen("/etc/resolv.conf", "r")) {
      char chunk[4096];
      std::size_t n;
      while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0 && text.size() < (1u << 20)) text.append(chunk, n);
      std::fclose(f);
    }
    from = parse_resolv_conf(text);
#endif
  }
  if (from.empty()) return make_error_code(errc::resolve_failed);  // Windows: name servers must be given
  std::uint16_t id = 0;
  std::string query, reply;
  for (int round = 0; round < dns_rounds; ++round) {
    for (const endpoint& server : from) {
      random_bytes(&id, sizeof id);
      if (!dns_encode_query(id, name, dns_type_srv, query)) return make_error_code(errc::bad_address);
      dns_answer answer;
      if (exchange_once(server, false, query, dns_server_timeout, reply) ||
          dns_decode_answer(reply, id, name, dns_type_srv, answer))
        continue;
      if (answer.truncated &&
          (exchange_once(server, true, query, dns_server_timeout, reply) ||
           dns_decode_answer(reply, id, name, dns_type_srv, answer) || answer.truncated))
        continue;
      if (answer.rcode != 0) return make_error_code(errc::resolve_failed);
      return srv_backends(answer, lookup_all, out);
    }
  }
  return make_error_code(errc::resolve_failed);
}

// What the resolver thread calls for each name: SRV names through lookup_srv,
// host names through getaddrinfo, each address at the name's port and weight.
inline std::error_code lookup_name(const resolver_name& name, const std::vector<endpoint>& servers,
                                   std::vector<discovered_address>& out) {
  if (name.srv) {
    std::error_code e = lookup_srv(name.at.host, servers, out);
    for (discovered_address& a : out) a.backup = a.backup || name.backup;
    return e;
  }
  out.clear();
  std::vector<resolved_address> found;
  std::error_code e = lookup_all(name.at, found);
  for (const resolved_address& a : found) out.push_back(discovered_address{a, name.weight, name.backup});
  return e;
}

// How long stop() waits for a lookup in progress before it leaves the thread to
// end on its own (getaddrinfo cannot be interrupted).
inline constexpr duration resolver_stop_wait{1000};

// One thread per server that resolves every name, then again every interval (at
// once when a name is added), and hands each result to `deliver` — on that thread,
// so deliver only posts it to an event loop. Everything the thread touches is in a
// state it shares, so a thread left behind by stop() touches nothing of its owner's
// and never delivers again.
class resolver {
 public:
  using lookup_function = std::function<std::error_code(const resolver_name&, std::vector<discovered_address>&)>;
  using deliver_function = std::function<void(resolution)>;

  resolver(duration interval, lookup_function lookup, deliver_function deliver) : state_(std::make_shared<state>()) {
    state_->interval = interval;
    state_->lookup = std::move(lookup);
    state_->deliver = std::move(deliver);
  }
  ~resolver() { stop(resolver_stop_wait); }
  resolver(const resolver&) = delete;
  resolver& operator=(const resolver&) = delete;

  void start(std::vector<resolver_name> names) {
    state_->names = std::move(names);
    std::shared_ptr<state> s = state_;
    thread_ = std::thread([s] { run(*s); });
  }

  // Adds a name; it is resolved at once.
  void add(resolver_name name) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->names.push_back(std::move(name));
    state_->wake = true;
    state_->changed.notify_all();
  }

  // Stops and joins the thread. When a lookup is still running after `bound`, the
  // thread is detached instead and ends when the lookup returns, delivering nothing:
  // returns false then. Idempotent.
  bool stop(duration bound) {
    if (!thread_.joinable()) return true;
    bool done;
    {
      std::unique_lock<std::mutex> lock(state_->mutex);
      state_->stopping = true;
      state_->changed.notify_all();
      done = state_->changed.wait_for(lock, bound, [this] { return state_->done; });
    }
    if (done) thread_.join();
    else thread_.detach();
    return done;
  }

 private:
  struct state {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<resolver_name> names;
    duration interval{};
    lookup_function lookup;
    deliver_function deliver;
    bool wake = false;
    bool stopping = false;
    bool done = false;
  };

  static void run(state& s) {
    block_sigpipe_on_this_thread();  // a lookup over TCP writes to a socket
    std::unique_lock<std::mutex> lock(s.mutex);
    while (!s.stopping) {
      s.wake = false;
      std::vector<resolver_name> names = s.names;
      for (std::size_t i = 0; i < names.size() && !s.stopping; ++i) {
        resolution r;
        r.index = i;
        r.name = names[i];
        lock.unlock();
        r.error = s.lookup(r.name, r.addresses);
        lock.lock();
        if (!s.stopping) s.deliver(std::move(r));  // under the lock: stop() then knows none follows
      }
      s.changed.wait_for(lock, s.interval, [&] { return s.stopping || s.wake; });
    }
    s.done = true;
    s.changed.notify_all();
  }

  std::shared_ptr<state> state_;
  std::thread thread_;
};

}  // namespace detail
}  // namespace harmony

#include <condition_variable>

namespace harmony {
namespace detail {

// >>state-keeper  the server's state-file thread: writes the kept registry off the event loops
// How long after a change the state file is written (changes in between join it), and
// the least time between two writes: a burst of registrations, or thousands of agents
// acking, cost at most one write a second.
inline constexpr duration state_write_delay{100};
inline constexpr duration state_write_interval{1000};
// The largest state file read (a full registry of 100,000 backends is about 25 MB).
inline constexpr std::size_t max_state_file_bytes = std::size_t{256} << 20;

// One thread per server with a state file. changed() (called under the registry's lock,
// on any thread) only marks the state dirty; the thread then takes a snapshot (the
// registry's lock, briefly) and writes it with replace_file (fsync and rename), so no
// event loop ever waits for the disk. stop() ends the thread and writes the last state.
class state_keeper {
 public:
  using snapshot_function = std::function<std::string()>;  // the file's text now

  state_keeper(std::string path, snapshot_function snapshot, const logger& log)
      : path_(std::move(path)), snapshot_(std::move(snapshot)), log_(log) {}
  ~state_keeper() { stop(); }
  state_keeper(const state_keeper&) = delete;
  state_keeper& operator=(const state_keeper&) = delete;

  void start() {
    thread_ = std::thread([this] { run(); });
  }

  // Thread-safe and cheap: a write follows within state_write_delay to state_write_interval.
  void changed() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (dirty_) return;
    dirty_ = true;
    dirty_since_ = clock::now();
    wake_.notify_one();
  }

  // Ends the thread, then writes the state as it is now (unless `last_write` is false:
  // an upgrade's successor owns the file now). Idempotent (writes once).
  void stop(bool last_write = true) {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      wake_.notify_one();
    }
    thread_.join();
    if (last_write) write();
  }

 private:
  void run() {
    block_sigpipe_on_this_thread();
    std::unique_lock<std::mutex> lock(mutex_);
    clock::time_point last_write = clock::now() - state_write_interval;
    while (!stopping_) {
      wake_.wait(lock, [this] { return stopping_ || dirty_; });
      if (stopping_) break;
      clock::time_point when = std::max(dirty_since_ + state_write_delay, last_write + state_write_interval);
      if (wake_.wait_until(lock, when, [this] { return stopping_; })) break;  // stop() writes
      dirty_ = false;
      lock.unlock();
      bool written = write();
      lock.lock();
      last_write = clock::now();
      if (!written && !dirty_) {  // a full disk, a reader holding it (Windows): again in a moment
        dirty_ = true;
        dirty_since_ = last_write;
      }
    }
  }

  bool write() {
    std::string text = snapshot_();
    std::error_code e = replace_file(path_, text);
    if (e) {
      if (!failing_) log_(log_level::error, "cannot write the state file %s: %s", path_.c_str(), e.message().c_str());
      failing_ = true;
      return false;
    }
    if (failing_) log_(log_level::info, "the state file %s is written again", path_.c_str());
    failing_ = false;
    return true;
  }

  std::string path_;
  snapshot_function snapshot_;
  const logger& log_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool dirty_ = false;
  bool stopping_ = false;
  clock::time_point dirty_since_;
  bool failing_ = false;  // the thread's, then stop()'s once it has joined
};

}  // namespace detail
}  // namespace harmony

namespace harmony {

namespace detail {
class admin_server;
class stats_server;
struct stats_snapshot;
class health_monitor;
class worker;
}  // namespace detail

// >>server-state  the state a server shares between its loops
struct server::impl {
  explicit impl(server_options o)
      : options(std::move(o)),
        log{options.log, options.level},
        backends(options.balance, options.host_timeout, options.persistent, limits_of(options), detail::random_id),
        concurrency(options.concurrency),
        per_client_limit(options.max_conns_per_client) {
    backends.lock()->set_slow_start(options.slow_start.count());
    backends.lock()->set_health(health_of(options));
    // Each state change is one log line, written once the table is unlocked again.
    backends.after = [this](detail::registry& table, std::unique_lock<std::mutex>& held) {
      if (!table.has_changes()) return;
      std::vector<std::string> lines = table.take_changes();
      held.unlock();
      for (const std::string& line : lines) log(log_level::info, "%s", line.c_str());
    };
    // `random` draws from a fast PRNG; its seed is the one thing it needs from the CSPRNG.
    std::uint64_t seed = 0;
    if (!detail::random_bytes(&seed, sizeof seed))
      seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    backends.lock()->seed(seed);
  }

  static detail::registry_limits limits_of(const server_options& o) {
    detail::registry_limits l;
    l.backends = o.max_backends;
    return l;
  }

  static detail::health_policy health_of(const server_options& o) {
    detail::health_policy p;
    p.max_fails = o.max_fails;
    p.fail_timeout_ms = o.fail_timeout.count();
    p.max_out_ms = max_fail_backoff.count();
    p.trial_limit_ms = o.connect_timeout.count() + o.fail_timeout.count();
    p.rise = o.check_rise;
    p.fall = o.check_fall;
    return p;
  }

  // A slot is one proxied connection under the concurrency limit.
  bool try_take_slot() {
    int limit = concurrency.load(std::memory_order_relaxed);
    std::int64_t used = proxied.load(std::memory_order_relaxed);
    for (;;) {
      if (limit >= 0 && used >= limit) return false;
      if (proxied.compare_exchange_weak(used, used + 1, std::memory_order_relaxed)) return true;
    }
  }
  // Asks every loop to admit what waits in its queue (>>worker).
  void wake_queues();

  // ---- The client connection limits (max_connections, max_conns_per_client), shared
  // by every loop. A connection counts from its accept to its session's close.
  // Whether a listener may accept one more; no pauses it (>>acceptor) until one ends.
  bool may_accept() {
    std::size_t at_most = connection_limit.load(std::memory_order_relaxed);
    std::int64_t limit = static_cast<std::int64_t>(at_most);
    if (clients.load(std::memory_order_relaxed) < limit) return true;
    // Set before the count is read again: a connection that ends in between resumes.
    if (!accept_paused.exchange(true)) log(log_level::warn, "%zu client connections open (--max-connections): "
                                                             "new ones wait in the backlog", at_most);
    return clients.load(std::memory_order_relaxed) < limit;
  }
  // Counts a connection from its accept on.
  void client_accepted() { clients.fetch_add(1, std::memory_order_relaxed); }
  // Counts the client's address (the connection's own, or what an upstream proxy's
  // header announced) while max_conns_per_client is in force (`counted`); false
  // (counted as refused) when it has that many open already.
  bool take_client_address(const detail::address& peer, bool& counted) {
    counted = false;
    std::size_t per_client_max = per_client_limit.load(std::memory_order_relaxed);
    if (per_client_max > 0) {
      std::string key = peer.host_key();
      std::lock_guard<std::mutex> lock(per_client_mutex);
      std::size_t& open = per_client[key];
      if (open >= per_client_max) {
        refused.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t held = 0;
        if (refused_log.pass(detail::now_ms(), held))
          log(log_level::warn, "connection from %s refused: %zu open from that address (--max-conns-per-client)%s",
              peer.host_text().c_str(), open, held ? (", " + std::to_string(held) + " more since the last such line").c_str() : "");
        return false;
      }
      ++open;
      counted = true;
    }
    return true;
  }
  // >>worker: may resume the listeners. `address_counted`: take_client_address counted `peer`.
  void client_ended(const detail::address& peer, bool address_counted);
  void resume_if_room();  // resumes paused listeners when connection_limit allows one more (>>worker)
  // A connection without a valid PROXY header (accept_proxy): logged, rate-limited.
  void bad_proxy_header(const detail::address& from, const char* why) {
    std::uint64_t held = 0;
    if (bad_proxy_log.pass(detail::now_ms(), held))
      log(log_level::warn, "connection from %s reset: %s (--accept-proxy)%s", from.to_endpoint().to_string().c_str(), why,
          held ? (", " + std::to_string(held) + " more since the last such line").c_str() : "");
  }

  std::error_code open(option_problem* problem);  // checks, binds, opens the loops
  // Binds `text` for the loops: with listeners_share_port one listener per loop on one
  // port, otherwise one for the first loop (invalid_socket for the others).
  std::error_code bind_listen(const std::string& text, std::vector<detail::socket_handle>& out, endpoint& bound,
                              option_problem* problem);
  // The same with the listeners of server_options::inherited (>>upgrade).
  std::error_code adopt_listen(std::vector<detail::socket_handle>& out, option_problem* problem);
  // server::reconfigure, under lifecycle.
  std::error_code reconfigure(const server_options& next, std::vector<std::string>* needs_restart);
  // Runs `task` on every loop's own thread and waits until each has (bounded); false
  // when one did not in time. Never from a loop thread.
  bool on_every_loop(const std::function<void(detail::worker&, std::size_t index)>& task);
  void close_all();
  server_stats collect_stats() const;
  detail::stats_snapshot snapshot();  // for the stats port, on the first loop
  void apply_concurrency(int limit) {
    concurrency.store(limit, std::memory_order_relaxed);
    wake_queues();
  }
  std::error_code add_static(std::string_view address, const backend_options& options, std::string* id_out);
  std::error_code add_static(std::string_view address, int weight, std::string* id_out) {
    backend_options o;
    o.weight = weight;
    return add_static(address, o, id_out);
  }
  // Backends from DNS: the names, the resolver thread, and applying what it found.
  std::error_code add_name(std::string_view address, const backend_options& options);
  void start_resolver();  // under lifecycle, once the loops are open
  void stop_resolver();
  void apply(const detail::resolution& r);  // on the first loop
  void rebuild_tables();  // with hash: the stale Maglev tables, on the first loop

  // ---- Keeping what it has (server::shutdown, --state-file).
  std::uint64_t open_connections() const;  // client connections open on every loop now
  bool on_own_thread() const;              // a loop thread of this server (under lifecycle)
  // Graceful stop: begins (or, with an earlier deadline, hurries) the drain; under lifecycle.
  void begin_drain(duration deadline);
  // A session ended: during a drain, the last one ends it (any loop thread).
  void session_ended() {
    if (drain_watch.load(std::memory_order_relaxed)) drain_check();
  }
  void drain_check();
  // Ends the drain: what is still open is `cut` when the loops go; they are told to stop.
  void finish_drain(const char* how);
  void load_state(const std::string& path);  // once, before the ports open
  void start_keeper();  // under lifecycle, with a state file
  std::string state_text();  // the state file's text now

  server_options options;
  detail::logger log;
  detail::locked<detail::registry> backends;  // shared by every loop: lock() for each use
  std::atomic<int> concurrency;
  std::atomic<std::int64_t> proxied{0};
  std::atomic<std::int64_t> waiting{0};
  std::atomic<std::size_t> connection_limit{0};  // max_connections in force (derived when 0), set by open()
  std::atomic<std::int64_t> clients{0};        // client connections open
  std::atomic<bool> accept_paused{false};      // a listener paused at connection_limit
  std::atomic<bool> winding_down{false};       // close_all: the loops go, nothing is resumed
  std::atomic<std::size_t> per_client_limit;   // max_conns_per_client in force, read on every loop
  std::atomic<std::uint64_t> refused{0};       // over max_conns_per_client
  detail::log_gate refused_log;
  detail::log_gate bad_proxy_log;
  std::mutex per_client_mutex;
  std::unordered_map<std::string, std::size_t> per_client;  // open connections by client address
  std::vector<std::unique_ptr<detail::worker>> workers;
  std::unique_ptr<detail::admin_server> admin;
  std::unique_ptr<detail::stats_server> stats_port;
  std::int64_t started_ms = 0;
  std::unique_ptr<detail::health_monitor> monitor;  // on the first loop: sweeps, active checks
  std::vector<detail::resolver_name> names;      // under lifecycle
  std::unique_ptr<detail::resolver> resolver;    // while running, when there are names
  std::vector<detail::discovery> discoveries;    // by name; touched on the first loop only
  std::vector<std::thread> threads;
  std::mutex lifecycle;
  bool running = false;
  bool caller_runs_loop = false;
  endpoint bound_listen;
  endpoint bound_admin;
  endpoint bound_stats;
  std::thread::id run_thread;  // the thread in run(), while it runs the first loop

  // The drain: its state under drain_mutex; drain_watch lets the loops' check cost a load.
  std::mutex drain_mutex;
  std::condition_variable drain_over;
  bool draining = false;
  std::uint64_t drain_round = 0;  // ends of drains so far: a waiter waits for the next
  std::uint64_t accepted_at_drain = 0;
  std::int64_t drain_began = 0;
  std::int64_t drain_deadline = 0;  // steady ms
  drain_report drain;               // the drain going on, then the last one
  std::atomic<bool> drain_watch{false};
  detail::timer drain_timer;  // the deadline, on the first loop
  // --state-file
  bool state_loaded = false;
  std::unique_ptr<detail::state_keeper> keeper;  // while running, with a state file
};

}  // namespace harmony

namespace harmony {
namespace detail {

// >>worker  one event loop: accept, admit, pick, and the host of its sessions
// One event loop and everything on it: the listener, the sessions, the wait
// queue. It is the session_host of its sessions, and reaches the state it
// shares with the other loops (backends, slots) through the server.
class worker final : public session_host {
 public:
  worker(server::impl& owner, const server_options& options, const logger& log)
      : owner_(owner),
        options_(options),
        settings_(relay_settings::from(options)),
        log_(log),
        pool_(options.buffer_bytes, options.bulk_buffer_bytes) {
    listener_.on_accept = [this](socket_handle fd, const address& peer) { deal(fd, peer); };
    listener_.admit = [this] { return owner_.may_accept(); };
    loop_.on_error = [this](std::error_code e) { log_(log_level::error, "event loop: %s", e.message().c_str()); };
    // Give the memory of a finished burst back to the system, a moment later
    // and at most four times a second, so that a quiet balancer shrinks again.
    trim_.fire = [this] {
      pool_.take_released();
#if defined(__GLIBC__)
      ::malloc_trim(0);
#endif
    };
    pool_.on_surplus = [this] {
      if (!trim_.armed()) loop_.schedule(trim_, loop_.now() + 250);
    };
  }
  ~worker() {
    for (auto& s : sessions_) s->close(true);
    listener_.close();
    // The sessions and the accept operations are memory the kernel may still write.
    loop_.settle();
  }
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  // Opens the loop; `listener` is this loop's listening socket, or invalid for a
  // loop that is dealt connections by the first one (see listeners_share_port).
  std::error_code open(socket_handle listener) {
    if (auto e = loop_.open()) return e;
    if (listener == invalid_socket) return {};
    return listener_.open(listener);
  }

  reactor& loop() noexcept override { return loop_; }

  // The body of a thread the server starts for this loop.
  void run_own_thread() {
    block_sigpipe_on_this_thread();
    loop_.run();
  }

  socket_handle listening_socket() const noexcept { return listener_.socket(); }  // on this loop
  // A drain (server::shutdown): closes the listener; what it had accepted goes on.
  void stop_accepting() { listener_.close(); }

  // Admits waiting connections while the concurrency limit allows, oldest first.
  void admit_waiting();
  std::size_t waiting() const noexcept { return queue_.size(); }
  // Accepts again after the connection limit paused the listener; on this loop.
  void resume_accepting() { listener_.resume(); }
  // server::reconfigure, on this loop: the settings of the connections from now on.
  void set_settings(relay_settings next) { settings_ = std::move(next); }
#if !defined(HARMONY_USE_IOCP)
  // server::reconfigure, on this loop: a changed listen address. The new listener is
  // bound already; what waits in the old one's backlog is taken in before it closes.
  std::error_code replace_listener(socket_handle next) {
    listener_.close_after_backlog();
    return listener_.open(next);
  }
#endif

  relay_counters stats;

 private:
  // session_host
  buffer_pool& pool() noexcept override { return pool_; }
#if defined(__linux__)
  // Asked on the loop's own thread, the first time a direction streams.
  pipe_pool* pipes() noexcept override {
    if (splice_allowed_ < 0) splice_allowed_ = options_.splice && sigpipe_harmless_on_this_thread();
    return splice_allowed_ == 1 ? &pipes_ : nullptr;
  }
#endif
  const relay_settings& settings() const noexcept override { return settings_; }
  const logger& log() const noexcept override { return log_; }
  relay_counters& counters() noexcept override { return stats; }
  bool pick(std::string_view client_key, const std::vector<lease>& tried, pick_result& out) override;
  void release(const lease& backend, bool failed, std::uint64_t bytes_in, std::uint64_t bytes_out) override;
  void report(const lease& backend, attempt_outcome what, bool trial, std::string_view why) override;
  std::string backend_id(const lease& backend) override;
  bool take_slot() override;
  void give_slot() override;
  bool wait_for_slot(session& s) override;
  bool wait_for_backend(session& s, bool keep_place) override;
  void stop_waiting(session& s) override;
  void recycle(session& s) override {
    free_sessions_.push_back(&s);
    owner_.session_ended();  // a drain waits for the last one
  }
  bool take_client_address(const address& peer, bool& counted) override {
    return owner_.take_client_address(peer, counted);
  }
  void client_ended(const address& peer, bool address_counted) override { owner_.client_ended(peer, address_counted); }
  void bad_proxy_header(const address& from, const char* why) override {
    stats.bad_proxy_headers.fetch_add(1, std::memory_order_relaxed);
    owner_.bad_proxy_header(from, why);
  }

  // Where one listener serves every loop, connections are dealt in turn.
  void deal(socket_handle fd, const address& peer);
  // Takes an accepted client connection into this loop.
  void adopt(socket_handle fd, const address& peer);
  session* make_session();

  server::impl& owner_;
  const server_options& options_;
  relay_settings settings_;
  const logger& log_;
  reactor loop_;
  buffer_pool pool_;
#if defined(__linux__)
  pipe_pool pipes_;
  int splice_allowed_ = -1;  // not yet asked
#endif
  acceptor listener_{loop_, log_};
  timer trim_;
  std::vector<std::unique_ptr<session>> sessions_;
  std::vector<session*> free_sessions_;
  std::size_t next_worker_ = 0;
  wait_queue<session, &session::waiting> queue_;
};

inline session* worker::make_session() {
  if (!free_sessions_.empty()) {
    session* s = free_sessions_.back();
    free_sessions_.pop_back();
    return s;
  }
  sessions_.push_back(std::make_unique<session>(*this));
  return sessions_.back().get();
}

inline void worker::deal(socket_handle fd, const address& peer) {
  owner_.client_accepted();
  auto& all = owner_.workers;
  worker* target = all.size() > 1 && !listeners_share_port ? all[next_worker_++ % all.size()].get() : this;
  if (target == this) return adopt(fd, peer);
  target->loop().post([target, fd, peer] { target->adopt(fd, peer); });
}

inline void worker::adopt(socket_handle fd, const address& peer) {
  stats.accepted.fetch_add(1, std::memory_order_relaxed);
  stats.active.fetch_add(1, std::memory_order_relaxed);
  make_session()->start(fd, peer);
}

inline bool worker::pick(std::string_view client_key, const std::vector<lease>& tried, pick_result& out) {
  return owner_.backends.lock()->pick(loop_.now(), client_key, tried, out);
}
// A release that makes room on a backend at its maxconn lets the waiting
// connections try again, on every loop, after this turn (never from inside it:
// an admitted connection may itself release at once).
inline void worker::release(const lease& backend, bool failed, std::uint64_t bytes_in, std::uint64_t bytes_out) {
  if (owner_.backends.lock()->release(backend, failed, bytes_in, bytes_out) && owner_.waiting.load(std::memory_order_relaxed) > 0)
    owner_.wake_queues();
}
inline void worker::report(const lease& backend, attempt_outcome what, bool trial, std::string_view why) {
  auto table = owner_.backends.lock();
  switch (what) {
    case attempt_outcome::failed: return table->attempt_failed(backend, trial, why, loop_.now());
    case attempt_outcome::answered: return table->attempt_succeeded(backend, trial, loop_.now());
    case attempt_outcome::abandoned: return table->attempt_abandoned(backend, trial, loop_.now());
  }
}
inline std::string worker::backend_id(const lease& backend) { return owner_.backends.lock()->id_of(backend); }

inline bool worker::take_slot() { return owner_.try_take_slot(); }

inline void worker::give_slot() {
  owner_.proxied.fetch_sub(1, std::memory_order_relaxed);
  if (!queue_.empty()) admit_waiting();
  else if (owner_.waiting.load(std::memory_order_relaxed) > 0) owner_.wake_queues();
}

inline bool worker::wait_for_slot(session& s) {
  if (queue_.size() >= settings_.queue_limit || !queue_.push(&s, loop_.now())) return false;
  owner_.waiting.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// The slot goes back without waking the queue: what its waiters lack is room on
// a backend, and the release that makes some wakes them (worker::release).
inline bool worker::wait_for_backend(session& s, bool keep_place) {
  owner_.proxied.fetch_sub(1, std::memory_order_relaxed);
  if (queue_.size() >= settings_.queue_limit) return false;
  if (!(keep_place ? queue_.push_front(&s) : queue_.push(&s, loop_.now()))) return false;
  owner_.waiting.fetch_add(1, std::memory_order_relaxed);
  return true;
}

inline void worker::stop_waiting(session& s) {
  if (queue_.remove(&s)) owner_.waiting.fetch_sub(1, std::memory_order_relaxed);
}

inline void worker::admit_waiting() {
  while (!queue_.empty() && owner_.try_take_slot()) {
    session* s = queue_.pop();
    owner_.waiting.fetch_sub(1, std::memory_order_relaxed);
    s->admitted();
    // Back at the head: every backend is at its maxconn, so the rest would wait too.
    if (queue_.contains(s)) break;
  }
}

}  // namespace detail

inline void server::impl::client_ended(const detail::address& peer, bool address_counted) {
  if (address_counted) {
    std::string key = peer.host_key();
    std::lock_guard<std::mutex> lock(per_client_mutex);
    auto it = per_client.find(key);
    if (it != per_client.end() && --it->second == 0) per_client.erase(it);
  }
  clients.fetch_sub(1, std::memory_order_relaxed);
  resume_if_room();
}

inline void server::impl::resume_if_room() {
  std::int64_t now_open = clients.load(std::memory_order_relaxed);
  if (now_open >= static_cast<std::int64_t>(connection_limit.load(std::memory_order_relaxed)) ||
      winding_down.load(std::memory_order_relaxed) || !accept_paused.exchange(false))
    return;
  for (auto& w : workers) {
    detail::worker* target = w.get();
    target->loop().post([target] { target->resume_accepting(); });
  }
}

inline void server::impl::wake_queues() {
  for (auto& w : workers) {
    detail::worker* target = w.get();
    target->loop().post([target] { target->admit_waiting(); });
  }
}

}  // namespace harmony

namespace harmony {
namespace detail {

// >>checker  the health monitor: the registry's sweep and the active checks, on the first loop
// Every second it sweeps the registry, so that what time alone changes (an ack too
// old, a back-off over) is noticed and logged. With check_interval set it probes
// every backend once per interval through the connection layer: the round's
// probes are spread evenly over the interval, each bounded by the check timeout,
// so no probe blocks the loop and many backends never connect at once.
class health_monitor {
 public:
  health_monitor(server::impl& srv, reactor& loop) : srv_(srv), loop_(loop) {
    interval_ms_ = srv.options.check_interval.count();
    sweep_.fire = [this] { sweep(); };
    tick_.fire = [this] { tick(); };
  }
  ~health_monitor() {
    loop_.cancel(sweep_);
    loop_.cancel(tick_);
    for (auto& p : probes_) {
      loop_.cancel(p.second->deadline);
      p.second->io.close(true);
    }
    loop_.settle();  // the probes' streams are memory the kernel may still write
  }
  health_monitor(const health_monitor&) = delete;
  health_monitor& operator=(const health_monitor&) = delete;

  void start() {
    loop_.schedule(sweep_, loop_.now() + sweep_ms);
    if (interval_ms_ > 0) loop_.schedule(tick_, loop_.now());
  }

  // server::reconfigure, on this loop: a new check_interval starts a new round at once
  // (0 ends the checks; probes in flight finish).
  void set_interval(std::int64_t ms) {
    if (ms == interval_ms_) return;
    interval_ms_ = ms;
    loop_.cancel(tick_);
    next_ = round_.size();
    if (interval_ms_ > 0) loop_.schedule(tick_, loop_.now());
  }

  static constexpr std::int64_t sweep_ms = 1000;

 private:
  struct probe {
    explicit probe(reactor& loop) : io(loop) {}
    stream io;
    timer deadline;
    std::string id;
    std::string reply;  // what came back so far, with check_expect
    bool done = false;
  };

  void sweep() {
    srv_.backends.lock()->sweep(loop_.now());
    loop_.schedule(sweep_, loop_.now() + sweep_ms);
  }

  // Launches the probes that are due; a new round begins when the last one is.
  void tick() {
    std::int64_t now = loop_.now();
    if (next_ >= round_.size()) {
      round_ = srv_.backends.lock()->check_targets();
      next_ = 0;
      round_start_ = now;
      if (round_.empty()) return loop_.schedule(tick_, now + interval_ms_);
    }
    while (next_ < round_.size() && due(next_) <= now) launch(round_[next_++]);
    loop_.schedule(tick_, next_ < round_.size() ? due(next_) : round_start_ + interval_ms_);
  }
  std::int64_t due(std::size_t i) const noexcept {
    return round_start_ + interval_ms_ * static_cast<std::int64_t>(i) / static_cast<std::int64_t>(round_.size());
  }

  void launch(const registry::check_target& t) {
    auto owned = std::make_unique<probe>(loop_);
    probe* p = owned.get();
    probes_.emplace(p, std::move(owned));
    p->id = t.id;
    p->deadline.fire = [this, p] { finish(*p, false, "timed out"); };
    p->io.on_connect = [this, p](std::error_code e) {
      if (e) return finish(*p, false, e.message());
      const server_options& o = srv_.options;
      if (!o.check_send.empty()) p->io.write(o.check_send);
      if (o.check_expect.empty()) finish(*p, true, {});
    };
    p->io.on_data = [this, p](std::string_view bytes) {
      const std::string& expect = srv_.options.check_expect;
      if (p->done || expect.empty()) return;
      p->reply.append(bytes.data(), bytes.size());
      if (p->reply.find(expect) != std::string::npos) return finish(*p, true, {});
      // Only the last bytes can begin a match that is still to come.
      std::size_t keep = std::max<std::size_t>(expect.size(), max_check_text);
      if (p->reply.size() > 2 * keep) p->reply.erase(0, p->reply.size() - keep);
    };
    p->io.on_close = [this, p](std::error_code e) {
      finish(*p, false, e ? e.message() : std::string("closed before the expected reply"));
    };
    std::int64_t timeout_ms = std::min<std::int64_t>(srv_.options.connect_timeout.count(), interval_ms_);
    loop_.schedule(p->deadline, loop_.now() + timeout_ms);
    if (std::error_code e = p->io.connect(to_os_address(t.to))) finish(*p, false, e.message());
  }

  void finish(probe& p, bool ok, const std::string& why) {
    if (p.done) return;
    p.done = true;
    loop_.cancel(p.deadline);
    srv_.backends.lock()->checked(p.id, ok, why, loop_.now());
    p.io.close(!ok);
    probe* raw = &p;
    loop_.retire(p.io.socket(), [this, raw] { probes_.erase(raw); });
  }

  server::impl& srv_;
  reactor& loop_;
  std::int64_t interval_ms_ = 0;
  timer sweep_;
  timer tick_;
  std::vector<registry::check_target> round_;  // this round's backends
  std::size_t next_ = 0;                       // the next of them to probe
  std::int64_t round_start_ = 0;
  std::unordered_map<probe*, std::unique_ptr<probe>> probes_;
};

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>admin  the admin port: legacy (harmony.js) and native dialects
// The admin port. Each connection first shows its dialect: harmony.js agents
// speak the legacy token protocol; everything else is the native line protocol
// (agents, and operators typing with nc). It runs on the first worker's loop.
class admin_server;

class admin_connection {
 public:
  admin_connection(admin_server& owner, reactor& loop) : io(loop), owner_(owner), loop_(loop) {
    clock_.fire = [this] { on_clock(); };
  }
  ~admin_connection() { loop_.cancel(clock_); }
  admin_connection(const admin_connection&) = delete;
  admin_connection& operator=(const admin_connection&) = delete;
  void start(socket_handle fd, const address& peer);
  // Ends the connection; `why` is logged. `graceful` sends the queued replies
  // first. Safe to call from inside its own callbacks.
  void end(const char* why, bool graceful = false);

  stream io;

 private:
  void on_data(std::string_view bytes);
  void on_clock();
  void apply(const admin_effect& e);
  std::int64_t idle_limit() const;

  admin_server& owner_;
  reactor& loop_;
  timer clock_;
  address peer_;
  std::unique_ptr<admin_protocol> protocol_;  // what the bytes mean (>>commands)
  std::int64_t last_heard_ = 0;
  bool ended_ = false;
};

// What admin commands reach of the server, besides its registry.
class admin_server_services final : public admin_services {
 public:
  explicit admin_server_services(server::impl& srv) : srv_(srv) {}
  server_stats stats() override { return srv_.collect_stats(); }
  int concurrency() override { return srv_.concurrency.load(); }
  std::error_code resolve(const endpoint& at, resolved_address& out) override { return detail::resolve(at, out); }
  std::error_code add_static(std::string_view address, int weight, std::string* id_out) override {
    return srv_.add_static(address, weight, id_out);
  }

 private:
  server::impl& srv_;
};

class admin_server {
 public:
  admin_server(server::impl& srv, reactor& loop)
      : srv_(srv), loop_(loop), listener_(loop, srv.log), services_(srv), connections_(loop) {
    listener_.on_accept = [this](socket_handle fd, const address& peer) { adopt(fd, peer); };
    sweep_.fire = [this] { sweep(); };
  }
  ~admin_server() {
    connections_.close_all();
    listener_.close();
    loop_.cancel(sweep_);
    // The connections' streams and the accepts are memory the kernel may still write.
    loop_.settle();
  }
  admin_server(const admin_server&) = delete;
  admin_server& operator=(const admin_server&) = delete;

  std::error_code open(const address& at, endpoint& bound) {
    socket_handle s = invalid_socket;
    if (auto e = open_listener(at, false, s)) return e;
    return take(s, bound);
  }
  // A listener bound already (inherited from the process before).
  std::error_code take(socket_handle s, endpoint& bound) {
    address local;
    local_address(s, local);
    bound = local.to_endpoint();
    loop_.schedule(sweep_, loop_.now() + 1000);
    return listener_.open(s);
  }
  // server::hand_over, on this loop: the successor takes the port; the agents, whose
  // connections end here, register with it.
  void hand_over() {
    listener_.close();
    connections_.each([](admin_connection& c) { c.end("handed over to the successor"); });
  }

  server::impl& srv() noexcept { return srv_; }
  reactor& loop() noexcept { return loop_; }
  socket_handle listening_socket() const noexcept { return listener_.socket(); }  // on this loop
  admin_services& services() noexcept { return services_; }

  // The live native connection of each agent's backend.
  std::unordered_map<std::string, admin_connection*> agents;
  // Backends whose agent dropped: forgotten when they stay away a host timeout.
  std::unordered_map<std::string, std::int64_t> offline_since;

  void release(admin_connection* c) { connections_.release(c); }

 private:
  void adopt(socket_handle fd, const address& peer);
  void sweep();

  server::impl& srv_;
  reactor& loop_;
  acceptor listener_;
  admin_server_services services_;
  timer sweep_;
  log_gate refused_log_;
  stream_set<admin_connection> connections_;
};



inline void admin_server::adopt(socket_handle fd, const address& peer) {
  if (connections_.size() >= srv_.options.max_admin_connections) {
    std::uint64_t held = 0;
    if (refused_log_.pass(loop_.now(), held))
      srv_.log(log_level::warn, "admin connection from %s refused: %zu connections open (--max-admin-connections)%s",
               peer.to_endpoint().to_string().c_str(), connections_.size(),
               held ? (", " + std::to_string(held) + " more since the last such line").c_str() : "");
    close_socket(fd);
    return;
  }
  connections_.add(*this, loop_)->start(fd, peer);
}

inline void admin_server::sweep() {
  std::int64_t now = loop_.now();
  std::int64_t keep = srv_.options.host_timeout.count();
  for (auto it = offline_since.begin(); it != offline_since.end();) {
    if (now - it->second > keep) {
      srv_.log(log_level::debug, "backend %s forgotten: its agent stayed away", it->first.c_str());
      srv_.backends.lock()->remove(it->first, "its agent stayed away a host timeout");
      it = offline_since.erase(it);
    } else {
      ++it;
    }
  }
  loop_.schedule(sweep_, now + 1000);
}

inline void admin_connection::start(socket_handle fd, const address& peer) {
  peer_ = peer;
  admin_protocol::config c;
  const server_options& o = owner_.srv().options;
  resolved_address from = to_resolved(peer);
  c.secret = o.admin_secret;
  c.refuse_legacy = !o.admin_secret.empty() && !in_any_cidr(o.allow_legacy, from);
  c.max_line = o.max_admin_line;
  c.host_timeout_ms = o.host_timeout.count();
  protocol_ = std::make_unique<admin_protocol>(from, peer.host_text(), std::move(c));
  last_heard_ = loop_.now();
  io.on_data = [this](std::string_view bytes) { on_data(bytes); };
  io.on_close = [this](std::error_code e) { end(e ? "connection error" : "closed by peer"); };
  if (std::error_code e = io.attach(fd)) {
    owner_.srv().log(log_level::error, "cannot watch the admin connection from %s: %s",
                     peer.to_endpoint().to_string().c_str(), e.message().c_str());
    return end("cannot watch the connection");
  }
  loop_.schedule(clock_, last_heard_ + idle_limit());
}

inline std::int64_t admin_connection::idle_limit() const {
  // A registered agent must be heard every heartbeat; three missed is death.
  if (protocol_->agent() && protocol_->heartbeat_ms() > 0)
    return std::max<std::int64_t>(3 * protocol_->heartbeat_ms(), 1000);
  return owner_.srv().options.admin_timeout.count();
}

inline void admin_connection::on_clock() {
  if (ended_) {
    io.close();
    return owner_.release(this);
  }
  std::int64_t deadline = last_heard_ + idle_limit();
  if (loop_.now() >= deadline) return end(protocol_->agent() ? "agent heartbeat lost" : "idle");
  loop_.schedule(clock_, deadline);
}

inline void admin_connection::end(const char* why, bool graceful) {
  if (ended_) return;
  ended_ = true;
  server::impl& srv = owner_.srv();
  srv.log(log_level::debug, "admin connection from %s ends: %s", peer_.to_endpoint().to_string().c_str(), why);
  if (protocol_->agent()) {
    const std::string& id = protocol_->bound_id();
    auto it = owner_.agents.find(id);
    if (it != owner_.agents.end() && it->second == this) {
      owner_.agents.erase(it);
      if (!srv.backends.lock()->set_online(id, false, loop_.now())) {
        owner_.offline_since[id] = loop_.now();
        srv.log(log_level::debug, "backend %s offline: %s", id.c_str(), why);
      }
    }
  }
  if (graceful && io.is_open()) {
    io.on_close = [this](std::error_code) { owner_.release(this); };
    io.finish();
    if (io.is_open()) return loop_.schedule(clock_, loop_.now() + 5000);  // bounded wait
  }
  loop_.cancel(clock_);
  io.close();
  owner_.release(this);
}

// The bytes go to the protocol; its reply goes out and its effects are applied.
inline void admin_connection::on_data(std::string_view bytes) {
  if (ended_) return;
  server::impl& srv = owner_.srv();
  admin_context ctx{srv.backends, owner_.services(), srv.log, loop_.now()};
  admin_result r = protocol_->feed(bytes, ctx);
  // Heard is a whole message answered, not a byte: a peer that trickles a line
  // without its end (slowloris) is still closed by the admin timeout.
  if (!r.replies.empty() || !r.effects.empty()) last_heard_ = loop_.now();
  for (const std::string& reply : r.replies) io.write(reply);
  for (const admin_effect& e : r.effects) {
    if (ended_) break;
    apply(e);
  }
}

inline void admin_connection::apply(const admin_effect& e) {
  switch (e.what) {
    case admin_effect::kind::end: return end(e.why, e.graceful);
    case admin_effect::kind::bind_agent: {
      if (!e.previous.empty()) {
        auto it = owner_.agents.find(e.previous);
        if (it != owner_.agents.end() && it->second == this) owner_.agents.erase(it);
      }
      owner_.agents[e.id] = this;  // a newer connection takes over from a stale one
      owner_.offline_since.erase(e.id);
      return loop_.schedule(clock_, last_heard_ + idle_limit());
    }
    case admin_effect::kind::unbind_agent: owner_.agents.erase(e.id); return;
    case admin_effect::kind::set_concurrency: return owner_.srv().apply_concurrency(e.limit);
  }
}

}  // namespace detail
}  // namespace harmony

namespace harmony {
namespace detail {

// >>stats  the stats port: /metrics, /status.json and the status page, on the first loop
// One HTTP exchange per connection (Connection: close): read the request head,
// answer from a snapshot taken then, finish. Bounded: a head of at most
// http_max_header bytes, stats_timeout to send it, stats_max_connections open.
inline constexpr std::int64_t stats_timeout_ms = 10000;
inline constexpr std::size_t stats_max_connections = 64;

class stats_server;

class stats_connection {
 public:
  stats_connection(stats_server& owner, reactor& loop) : io(loop), owner_(owner), loop_(loop) {
    clock_.fire = [this] { end(); };
  }
  ~stats_connection() { loop_.cancel(clock_); }
  stats_connection(const stats_connection&) = delete;
  stats_connection& operator=(const stats_connection&) = delete;
  void start(socket_handle fd);
  void end();

  stream io;

 private:
  void on_data(std::string_view bytes);

  stats_server& owner_;
  reactor& loop_;
  timer clock_;
  std::string head_;
  bool answered_ = false;
  bool ended_ = false;
};

class stats_server {
 public:
  stats_server(server::impl& srv, reactor& loop) : srv_(srv), loop_(loop), listener_(loop, srv.log), connections_(loop) {
    listener_.on_accept = [this](socket_handle fd, const address&) { adopt(fd); };
  }
  ~stats_server() {
    connections_.close_all();
    listener_.close();
    loop_.settle();  // the streams and accepts are memory the kernel may still write
  }
  stats_server(const stats_server&) = delete;
  stats_server& operator=(const stats_server&) = delete;

  std::error_code open(const address& at, endpoint& bound) {
    socket_handle s = invalid_socket;
    if (auto e = open_listener(at, false, s)) return e;
    return take(s, bound);
  }
  // A listener bound already (inherited from the process before).
  std::error_code take(socket_handle s, endpoint& bound) {
    address local;
    local_address(s, local);
    bound = local.to_endpoint();
    return listener_.open(s);
  }
  // server::hand_over, on this loop: the successor takes the port.
  void hand_over() { listener_.close(); }
  socket_handle listening_socket() const noexcept { return listener_.socket(); }  // on this loop
  server::impl& srv() noexcept { return srv_; }
  void release(stats_connection* c) { connections_.release(c); }

 private:
  void adopt(socket_handle fd) {
    if (connections_.size() >= stats_max_connections) {
      close_socket(fd);
      return;
    }
    connections_.add(*this, loop_)->start(fd);
  }

  server::impl& srv_;
  reactor& loop_;
  acceptor listener_;
  stream_set<stats_connection> connections_;
};

inline void stats_connection::start(socket_handle fd) {
  io.on_data = [this](std::string_view bytes) { on_data(bytes); };
  io.on_close = [this](std::error_code) { end(); };
  if (io.attach(fd)) return end();
  loop_.schedule(clock_, loop_.now() + stats_timeout_ms);
}

inline void stats_connection::end() {
  if (ended_) return;
  ended_ = true;
  loop_.cancel(clock_);
  io.close();
  owner_.release(this);
}

inline void stats_connection::on_data(std::string_view bytes) {
  if (answered_ || ended_) return;
  head_.append(bytes.data(), std::min(bytes.size(), http_max_header + 4 - std::min(head_.size(), http_max_header + 4)));
  http_request r = parse_http_request(head_);
  if (r.result == http_request::status::incomplete && head_.size() <= http_max_header) return;
  answered_ = true;
  io.on_close = [this](std::error_code) { end(); };
  io.write(stats_answer(r, owner_.srv().snapshot()));
  io.finish();  // the FIN, then the client's; on_close follows when that takes longer
  if (!io.is_open()) end();
}

}  // namespace detail
}  // namespace harmony

namespace harmony {

// >>server-impl  harmony::server
// Opens a port beside the listen port (admin, stats) on the first loop; on a
// failure `port` stays empty and `problem` names the option and the address.
// `inherited`: the port's listener from the process before (-1: none), taken instead.
template <class Port>
std::error_code open_side_port(server::impl& srv, const char* option, const std::string& text, std::int64_t inherited,
                               std::unique_ptr<Port>& port, endpoint& bound, option_problem* problem) {
  endpoint at;
  detail::address where;
  std::error_code e = parse_endpoint(text, at);
#if !defined(_WIN32)  // check() refuses inherited sockets elsewhere
  if (!e && inherited >= 0) {
    auto s = static_cast<detail::socket_handle>(inherited);
    e = detail::adopt_listener(s);
    if (!e) {
      port = std::make_unique<Port>(srv, srv.workers.front()->loop());
      e = port->take(s, bound);
    } else {
      detail::close_socket(s);
    }
    if (e) {
      port.reset();
      if (problem) *problem = option_problem{option, "cannot take the inherited listener: " + e.message()};
    }
    return e;
  }
#endif
  (void)inherited;
  if (!e) e = detail::resolve(at, where, true);
  if (!e) {
    port = std::make_unique<Port>(srv, srv.workers.front()->loop());
    e = port->open(where, bound);
  }
  if (e) {
    port.reset();
    if (problem) *problem = option_problem{option, "cannot listen on " + at.to_string() + ": " + e.message()};
  }
  return e;
}

inline std::error_code server::impl::open(option_problem* problem) {
  if (auto e = check(options, problem)) return e;
  connection_limit.store(options.max_connections ? options.max_connections
                                                 : derived_max_connections(detail::descriptor_limit(), options.max_admin_connections),
                         std::memory_order_relaxed);
  per_client_limit.store(options.max_conns_per_client, std::memory_order_relaxed);
  clients.store(0, std::memory_order_relaxed);
  accept_paused.store(false, std::memory_order_relaxed);
  winding_down.store(false, std::memory_order_relaxed);
  if (!state_loaded) {  // before agents can ack
    if (!options.restore_from.empty()) load_state(options.restore_from);
    else if (!options.state_file.empty()) load_state(options.state_file);
  }
  {
    std::lock_guard<std::mutex> lock(drain_mutex);
    draining = false;
  }
  drain_watch.store(false, std::memory_order_relaxed);
  drain_timer.fire = [this] { finish_drain("at the deadline"); };
  std::vector<detail::socket_handle> listeners;
  if (auto e = options.inherited.listen.empty() ? bind_listen(options.listen, listeners, bound_listen, problem)
                                                 : adopt_listen(listeners, problem))
    return e;
  for (auto s : listeners) {
    workers.push_back(std::make_unique<detail::worker>(*this, options, log));
    if (auto e = workers.back()->open(s)) {
      workers.clear();
      return e;
    }
  }
  monitor = std::make_unique<detail::health_monitor>(*this, workers.front()->loop());
  monitor->start();
#if !defined(_WIN32)
  // Inherited ports this configuration has no use for.
  if (options.admin.empty() && options.inherited.admin >= 0)
    detail::close_socket(static_cast<detail::socket_handle>(options.inherited.admin));
  if (options.stats.empty() && options.inherited.stats >= 0)
    detail::close_socket(static_cast<detail::socket_handle>(options.inherited.stats));
#endif
  if (!options.admin.empty()) {
    if (auto e = open_side_port(*this, "admin", options.admin, options.inherited.admin, admin, bound_admin, problem)) {
      monitor.reset();
      workers.clear();
      return e;
    }
    log(log_level::info, "admin port on %s", bound_admin.to_string().c_str());
  }
  if (!options.stats.empty()) {
    if (auto e = open_side_port(*this, "stats", options.stats, options.inherited.stats, stats_port, bound_stats, problem)) {
      admin.reset();
      monitor.reset();
      workers.clear();
      return e;
    }
    log(log_level::info, "stats on http://%s/ (/metrics, /status.json)", bound_stats.to_string().c_str());
  }
  started_ms = detail::now_ms();
  log(log_level::info, "listening on %s (%s, %d worker%s, at most %zu connections)", bound_listen.to_string().c_str(),
      to_string(options.balance), options.workers, options.workers > 1 ? "s" : "",
      connection_limit.load(std::memory_order_relaxed));
  detail::reactor* first = &workers.front()->loop();
  backends.lock()->on_tables_stale([this, first] { first->post([this] { rebuild_tables(); }); });
  rebuild_tables();
  if (!names.empty()) start_resolver();
  if (!options.state_file.empty()) start_keeper();
  options.inherited = inherited_sockets{};  // taken: a later start() binds afresh
  return {};
}

inline std::error_code server::impl::bind_listen(const std::string& text, std::vector<detail::socket_handle>& out,
                                                endpoint& bound_at, option_problem* problem) {
  endpoint at;
  if (auto e = parse_endpoint(text, at)) return e;
  detail::address where;
  if (auto e = detail::resolve(at, where, true)) {
    if (problem) *problem = option_problem{"listen", "cannot resolve " + at.to_string() + ": " + e.message()};
    return e;
  }
  std::vector<detail::socket_handle> listeners;
  for (int i = 0; i < options.workers; ++i) {
    detail::socket_handle s = detail::invalid_socket;
    if (i > 0 && !detail::listeners_share_port) {  // one listener: the first worker deals out what it accepts
      listeners.push_back(s);
      continue;
    }
    std::error_code e = detail::open_listener(where, options.workers > 1, s);
    if (!e && i == 0) {
      // With port 0 every further worker must join the port the first one got.
      detail::address bound;
      detail::local_address(s, bound);
      where.set_port(bound.port());
      bound_at = bound.to_endpoint();
    }
    if (e) {
      for (auto l : listeners)
        if (l != detail::invalid_socket) detail::close_socket(l);
      if (problem) *problem = option_problem{"listen", "cannot listen on " + at.to_string() + ": " + e.message()};
      return e;
    }
    listeners.push_back(s);
  }
  out = std::move(listeners);
  return {};
}

// The resolver's results are applied on the first loop, one name at a time.
inline void server::impl::start_resolver() {
  detail::reactor* loop = &workers.front()->loop();
  std::vector<endpoint> servers;
  for (const std::string& text : options.nameservers) {
    servers.emplace_back();
    detail::parse_nameserver(text, servers.back());  // check() has judged them
  }
  auto lookup = [servers](const detail::resolver_name& name, std::vector<detail::discovered_address>& out) {
    return detail::lookup_name(name, servers, out);
  };
  resolver = std::make_unique<detail::resolver>(options.resolve_interval, lookup,
                                                [this, loop](detail::resolution r) {
                                                  loop->post([this, r = std::move(r)] { apply(r); });
                                                });
  resolver->start(names);
}

inline std::error_code server::impl::add_name(std::string_view address, const backend_options& options) {
  endpoint at;
  bool srv = detail::is_srv_name(address);
  if (srv) at.host = detail::dns_canonical(address);
  else if (auto e = parse_endpoint(address, at)) return e;
  if ((!srv && at.port == 0) || !detail::registry::valid_weight(options.weight) || options.maxconn < 0 ||
      options.maxconn > max_maxconn)
    return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(lifecycle);
  names.push_back(detail::resolver_name{at, options.weight, srv, options.maxconn, options.backup, options.proxy});
  if (resolver) resolver->add(names.back());
  else if (running) start_resolver();
  return {};
}

inline void server::impl::apply(const detail::resolution& r) {
  if (discoveries.size() <= r.index) discoveries.resize(r.index + 1);
  detail::discovery& d = discoveries[r.index];
  std::string name = r.name.srv ? r.name.at.host : r.name.at.to_string();
  detail::discovery::outcome o;
  if (r.error) {
    o = d.failed();
    if (o.news)
      log(log_level::warn, "%s does not resolve (%s): keeping its %zu backends", name.c_str(), r.error.message().c_str(),
          d.live());
  } else {
    o = d.resolved(r.addresses);
    if (o.news) log(log_level::info, "%s resolves again", name.c_str());
  }
  using kind = detail::discovery::change::kind;
  std::vector<std::string> notes;
  {
    auto table = backends.lock();
    std::int64_t now = detail::now_ms();
    for (const auto& c : o.changes) {
      std::string at = detail::to_os_address(c.to).to_endpoint().to_string();
      switch (c.what) {
        case kind::add: {
          std::string id;
          std::error_code e = table->add(detail::to_os_address(c.to).to_endpoint(), &c.to, c.weight, false, &id, now);
          if (!e) {
            table->set_source(id, name);
            if (c.backup) table->set_backup(id, true);
            if (r.name.maxconn) table->set_maxconn(id, r.name.maxconn);
            table->set_proxy(id, r.name.proxy);
            d.bind(c.to, id);
          } else {
            notes.push_back("backend " + at + " from " + name + " not added: " + e.message());
          }
          break;
        }
        case kind::drain:
          table->drain(c.id, true, now, "gone from " + name);
          break;
        case kind::restore:
          table->drain(c.id, false, now, "back in " + name);
          break;
        case kind::reweight:
          table->set_weight(c.id, c.weight);
          table->set_backup(c.id, c.backup);
          notes.push_back("backend " + at + " from " + name + " now weight " + std::to_string(c.weight) +
                          (c.backup ? ", backup" : ""));
          break;
        case kind::remove: break;
      }
    }
    for (const auto& c : d.sweep([&](std::string_view id) { return table->active_of(id); })) {
      table->remove(c.id, "gone from " + name + ", its connections have ended");
    }
  }
  rebuild_tables();  // on this loop now, rather than after the task it posted
  for (const auto& n : notes) log(log_level::info, "%s", n.c_str());
}

inline void server::impl::stop_resolver() {
  if (resolver && !resolver->stop(detail::resolver_stop_wait))
    log(log_level::warn, "a name lookup is still running: its thread is left to end on its own");
  resolver.reset();
}

// Builds the stale Maglev tables without the registry's lock, so that picks on
// every loop go on (with the tables before the change) while one is built. A
// change on a loop (an admin command, an expiry a pick finds) posts it to the
// first loop; a change through the API or the resolver runs it at once.
inline void server::impl::rebuild_tables() {
  for (detail::registry::table_job& job : backends.lock()->take_table_jobs()) {
    detail::maglev_table table = job.build();
    backends.lock()->install_table(job.which, job.generation, std::move(table));
  }
}

inline void server::impl::close_all() {
  winding_down.store(true, std::memory_order_relaxed);
  finish_drain("cut short by stop()");  // when one is going on
  stop_resolver();  // before the loops it delivers to go
  backends.lock()->on_tables_stale(nullptr);  // picks rebuild them from now on, should any come
  for (auto& w : workers) w->loop().stop();
  for (auto& t : threads)
    if (t.joinable()) t.join();
  threads.clear();
  if (!workers.empty()) workers.front()->loop().cancel(drain_timer);  // its thread has ended
  admin.reset();
  stats_port.reset();
  monitor.reset();
  workers.clear();
  if (keeper) {  // the loops are gone: the last state is final
    backends.lock()->on_change(nullptr);
    keeper->stop();
    keeper.reset();
  }
  bound_listen = endpoint{};
  bound_admin = endpoint{};
  bound_stats = endpoint{};
  running = false;
}

HARMONY_DEF server::server(server_options options) : impl_(std::make_unique<impl>(std::move(options))) {}

HARMONY_DEF server::~server() { stop(); }

HARMONY_DEF std::error_code server::start(option_problem* problem) {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) return make_error_code(errc::already_running);
  if (auto e = impl_->open(problem)) return e;
  impl_->running = true;
  impl_->caller_runs_loop = false;
  for (auto& w : impl_->workers) impl_->threads.emplace_back(&detail::worker::run_own_thread, w.get());
  return {};
}

HARMONY_DEF std::error_code server::run(option_problem* problem) {
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (impl_->running) return make_error_code(errc::already_running);
    if (auto e = impl_->open(problem)) return e;
    impl_->running = true;
    impl_->caller_runs_loop = true;
    for (std::size_t i = 1; i < impl_->workers.size(); ++i)
      impl_->threads.emplace_back(&detail::worker::run_own_thread, impl_->workers[i].get());
    impl_->run_thread = std::this_thread::get_id();
  }
  impl_->workers.front()->loop().run();
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  impl_->close_all();
  return {};
}

HARMONY_DEF void server::stop() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return;
  for (auto& w : impl_->workers) w->loop().stop();
  if (impl_->caller_runs_loop) return;  // run() cleans up when its loop returns
  for (auto& t : impl_->threads)
    if (t.get_id() == std::this_thread::get_id()) return;  // from a callback: the destructor joins
  impl_->close_all();
}

HARMONY_DEF drain_report server::shutdown() {
  duration deadline;
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);  // reconfigure may change it
    deadline = impl_->options.drain_timeout;
  }
  return shutdown(deadline);
}

HARMONY_DEF drain_report server::shutdown(duration deadline) {
  std::uint64_t round;
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (!impl_->running) return {};
    {
      std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
      round = impl_->drain_round;
    }
    impl_->begin_drain(deadline);
    if (impl_->on_own_thread()) {  // a callback cannot wait for its own loop
      std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
      return impl_->drain;
    }
  }
  drain_report report;
  {
    std::unique_lock<std::mutex> lock(impl_->drain_mutex);
    // The first loop's timer ends the drain at the deadline; the bound here only keeps a
    // loop that cannot run its timer from holding the caller for ever.
    auto bound = std::chrono::steady_clock::now() + std::max(deadline, duration{0}) + std::chrono::seconds(5);
    impl_->drain_over.wait_until(lock, bound, [&] { return impl_->drain_round != round; });
    report = impl_->drain;
  }
  stop();  // joins the threads (in run(), the thread running it cleans up)
  return report;
}

inline std::uint64_t server::impl::open_connections() const {
  std::uint64_t n = 0;
  for (auto& w : workers) n += w->stats.active.load(std::memory_order_relaxed);
  return n;
}

inline bool server::impl::on_own_thread() const {
  auto me = std::this_thread::get_id();
  if (caller_runs_loop && me == run_thread) return true;
  for (auto& t : threads)
    if (t.get_id() == me) return true;
  return false;
}

inline void server::impl::begin_drain(duration deadline) {
  std::int64_t now = detail::now_ms();
  std::int64_t until = now + std::max<std::int64_t>(0, deadline.count());
  {
    std::lock_guard<std::mutex> lock(drain_mutex);
    if (draining) {
      if (until >= drain_deadline) return;
      drain_deadline = until;  // hurried: the timer moves up
    } else {
      draining = true;
      drain_began = now;
      drain_deadline = until;
      drain = drain_report{};
      drain.open = open_connections();
      accepted_at_drain = 0;
      for (auto& w : workers) accepted_at_drain += w->stats.accepted.load(std::memory_order_relaxed);
      log(log_level::info, "draining: the listen port is closed, %llu connection%s open, waiting up to %s",
          static_cast<unsigned long long>(drain.open), drain.open == 1 ? "" : "s", format_duration(deadline).c_str());
      drain_watch.store(true, std::memory_order_relaxed);
      for (auto& w : workers) {
        detail::worker* target = w.get();
        target->loop().post([target] { target->stop_accepting(); });
      }
    }
  }
  detail::reactor& first = workers.front()->loop();
  first.post([this, &first, until] {
    drain_check();  // none open: done at once
    if (!drain_watch.load(std::memory_order_relaxed)) return;
    first.schedule(drain_timer, until);
  });
}

inline void server::impl::drain_check() {
  if (open_connections() == 0) finish_drain("");
}

inline void server::impl::finish_drain(const char* how) {
  std::lock_guard<std::mutex> lock(drain_mutex);
  if (!draining || !drain_watch.load(std::memory_order_relaxed)) return;
  drain_watch.store(false, std::memory_order_relaxed);
  std::uint64_t accepted = 0;
  for (auto& w : workers) accepted += w->stats.accepted.load(std::memory_order_relaxed);
  drain.cut = open_connections();  // closed when the loops go
  std::uint64_t served = drain.open + (accepted - accepted_at_drain);
  drain.finished = served > drain.cut ? served - drain.cut : 0;
  std::string took = format_duration(duration{detail::now_ms() - drain_began});
  if (drain.cut == 0)
    log(log_level::info, "drained in %s: %llu connection%s finished, none cut", took.c_str(),
        static_cast<unsigned long long>(drain.finished), drain.finished == 1 ? "" : "s");
  else
    log(log_level::warn, "drain ended %s after %s: %llu connection%s finished, %llu cut", how, took.c_str(),
        static_cast<unsigned long long>(drain.finished), drain.finished == 1 ? "" : "s",
        static_cast<unsigned long long>(drain.cut));
  ++drain_round;
  drain_over.notify_all();
  for (auto& w : workers) w->loop().stop();
}

inline void server::impl::load_state(const std::string& path) {
  state_loaded = true;
  std::string text;
  std::error_code e = detail::read_file(path, text, detail::max_state_file_bytes);
  if (e == std::errc::no_such_file_or_directory) {
    log(log_level::info, "state file %s does not exist yet: no backend to restore", path.c_str());
    return;
  }
  if (e) {
    log(log_level::error, "cannot read the state file %s (%s): starting without its backends", path.c_str(),
        e.message().c_str());
    return;
  }
  detail::parsed_state parsed = detail::parse_state(text);
  for (const auto& p : parsed.problems) {
    if (p.line) log(log_level::warn, "state file %s line %zu: %s (skipped)", path.c_str(), p.line, p.what.c_str());
    else log(log_level::warn, "state file %s: %s", path.c_str(), p.what.c_str());
  }
  std::size_t restored = 0;
  std::int64_t now = detail::now_ms(), unix_now = detail::unix_ms();
  for (const auto& r : parsed.records) {
    detail::resolved_address to;
    if (r.port != 0 && detail::resolve(endpoint{r.addr, r.port}, to)) {
      log(log_level::warn, "state file %s: backend %s: '%s' is not an address (skipped)", path.c_str(), r.id.c_str(),
          r.addr.c_str());
      continue;
    }
    if (auto re = backends.lock()->restore(r, r.port ? &to : nullptr, now, unix_now)) {
      log(log_level::warn, "state file %s: backend %s not restored: %s", path.c_str(), r.id.c_str(),
          re.message().c_str());
      continue;
    }
    ++restored;
  }
  log(log_level::info, "state file %s: %zu backend%s restored%s", path.c_str(), restored, restored == 1 ? "" : "s",
      parsed.complete ? "" : " (the file is incomplete)");
}

inline std::string server::impl::state_text() {
  std::vector<detail::kept_backend> kept = backends.lock()->keep(detail::now_ms(), detail::unix_ms());
  std::vector<detail::state_record> records;
  records.reserve(kept.size());
  for (auto& k : kept) {
    if (k.to.valid()) k.record.addr = detail::to_os_address(k.to).host_text();
    records.push_back(std::move(k.record));
  }
  return detail::format_state(records);
}

inline void server::impl::start_keeper() {
  keeper = std::make_unique<detail::state_keeper>(options.state_file, [this] { return state_text(); }, log);
  detail::state_keeper* k = keeper.get();
  backends.lock()->on_change([k] { k->changed(); });
  keeper->start();
}

HARMONY_DEF endpoint server::listen_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_listen;
}

HARMONY_DEF endpoint server::admin_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_admin;
}

HARMONY_DEF endpoint server::stats_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_stats;
}

inline detail::stats_snapshot server::impl::snapshot() {
  detail::stats_snapshot s;
  s.totals = collect_stats();  // the loops' counters are atomics: no lock needed on this loop
  std::int64_t now = detail::now_ms();
  s.backends = backends.lock()->list(now);
  s.uptime_ms = now - started_ms;
  s.open_descriptors = detail::count_open_descriptors();
  s.algorithm = to_string(options.balance);
  s.version = std::to_string(HARMONY_VERSION_MAJOR) + "." + std::to_string(HARMONY_VERSION_MINOR) + "." +
              std::to_string(HARMONY_VERSION_PATCH);
  return s;
}

HARMONY_DEF std::error_code server::add_backend(std::string_view address, int weight, std::string* id_out) {
  return impl_->add_static(address, weight, id_out);
}

HARMONY_DEF std::error_code server::add_backend(std::string_view address, const backend_options& options,
                                                std::string* id_out) {
  return impl_->add_static(address, options, id_out);
}

inline std::error_code server::impl::add_static(std::string_view address, const backend_options& options,
                                                std::string* id_out) {
  endpoint at;
  if (auto e = parse_endpoint(address, at)) return e;
  if (at.port == 0) return make_error_code(errc::bad_option);  // the registry judges the weight
  if (options.maxconn < 0 || options.maxconn > max_maxconn) return make_error_code(errc::bad_option);
  detail::resolved_address to;
  if (auto e = detail::resolve(at, to)) return e;
  std::string id;
  {
    auto r = backends.lock();
    if (auto e = r->add(at, &to, options.weight, false, &id, detail::now_ms())) return e;
    r->set_maxconn(id, options.maxconn);
    r->set_backup(id, options.backup);
    r->set_proxy(id, options.proxy);
  }
  rebuild_tables();
  if (id_out) *id_out = id;
  return {};
}

HARMONY_DEF std::error_code server::add_backend_name(std::string_view address, int weight) {
  backend_options o;
  o.weight = weight;
  return impl_->add_name(address, o);
}

HARMONY_DEF std::error_code server::add_backend_name(std::string_view address, const backend_options& options) {
  return impl_->add_name(address, options);
}

// A change through the API rebuilds what it made stale before it returns, on the
// caller's thread: the next connection sees it, and no loop pays for it.
HARMONY_DEF std::error_code server::remove_backend(std::string_view id) {
  std::error_code e = impl_->backends.lock()->remove(id);
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::set_weight(std::string_view id, int weight) {
  std::error_code e = impl_->backends.lock()->set_weight(id, weight);
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::drain(std::string_view id, bool on) {
  std::error_code e = impl_->backends.lock()->drain(id, on, detail::now_ms());
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::set_concurrency(int limit) {
  if (limit < min_concurrency || limit > max_concurrency) return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) impl_->apply_concurrency(limit);
  else impl_->concurrency.store(limit, std::memory_order_relaxed);
  return {};
}

HARMONY_DEF std::string format_access_entry(const access_entry& e, std::int64_t unix_ms) {
  auto text = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
  std::string tried;
  for (const std::string& t : e.tried) tried += (tried.empty() ? "" : ",") + t;
  std::string reason = "\"";
  for (char c : e.reason) {  // one line whatever the text: quotes and control bytes escaped
    if (c == '"' || c == '\\') reason += '\\';
    if (static_cast<unsigned char>(c) < ' ') c = ' ';
    reason += c;
  }
  reason += '"';
  return "time=" + detail::iso8601_utc(unix_ms) + " client=" + text(e.client) + " via=" + text(e.via) +
         " backend=" + text(e.backend) + " tried=" + text(tried) + " bytes_in=" + std::to_string(e.bytes_in) +
         " bytes_out=" + std::to_string(e.bytes_out) + " queue_ms=" + std::to_string(e.queued.count()) +
         " duration_ms=" + std::to_string(e.lasted.count()) + " end=" + (*e.end ? e.end : "-") +
         " reason=" + reason;
}

HARMONY_DEF std::vector<backend_info> server::backends() const { return impl_->backends.lock()->list(detail::now_ms()); }

HARMONY_DEF server_stats server::stats() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->collect_stats();
}

inline server_stats server::impl::collect_stats() const {
  server_stats s;
  for (auto& w : workers) {
    s.accepted += w->stats.accepted.load(std::memory_order_relaxed);
    s.active += w->stats.active.load(std::memory_order_relaxed);
    s.unavailable += w->stats.unavailable.load(std::memory_order_relaxed);
    s.connect_failures += w->stats.connect_failures.load(std::memory_order_relaxed);
    s.bytes_in += w->stats.bytes_in.load(std::memory_order_relaxed);
    s.bytes_out += w->stats.bytes_out.load(std::memory_order_relaxed);
    s.bytes_spliced += w->stats.bytes_spliced.load(std::memory_order_relaxed);
    s.bad_proxy_headers += w->stats.bad_proxy_headers.load(std::memory_order_relaxed);
  }
  s.queued = static_cast<std::uint64_t>(waiting.load(std::memory_order_relaxed));
  s.refused = refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace harmony

namespace harmony {

// >>reconfigure  server::reconfigure: a running server takes new options
namespace detail {

// The options a running server cannot change, by the name check() gives them: what
// they set up (threads, ports beside the listen port, buffers, the state writer, the
// admin handshake, the resolver thread) lives as long as the server runs.
inline std::vector<std::string> restart_only_changes(const server_options& was, const server_options& next) {
  std::vector<std::string> out;
  auto fixed = [&](const char* option, bool same) {
    if (!same) out.push_back(option);
  };
  fixed("workers", was.workers == next.workers);
  fixed("admin", was.admin == next.admin);
  fixed("stats", was.stats == next.stats);
  fixed("buffer_bytes", was.buffer_bytes == next.buffer_bytes);
  fixed("bulk_buffer_bytes", was.bulk_buffer_bytes == next.bulk_buffer_bytes);
  fixed("splice", was.splice == next.splice);
  fixed("state_file", was.state_file == next.state_file);
  fixed("admin_secret", was.admin_secret == next.admin_secret);
  fixed("allow_legacy", was.allow_legacy == next.allow_legacy);
  fixed("resolve_interval", was.resolve_interval == next.resolve_interval);
  fixed("nameservers", was.nameservers == next.nameservers);
#if defined(HARMONY_USE_IOCP)
  // Posted accepts of the old listener would be cancelled, and what they had matched lost.
  fixed("listen", was.listen == next.listen);
#endif
  return out;
}

// The options the loops read as they run, copied into the server's on the first loop
// (their reader) while the caller of reconfigure waits.
inline void take_live_options(server_options& to, const server_options& from) {
  to.balance = from.balance;
  to.persistent = from.persistent;
  to.concurrency = from.concurrency;
  to.requeue = from.requeue;
  to.unavailable = from.unavailable;
  to.on_unavailable = from.on_unavailable;
  to.on_backend_error = from.on_backend_error;
  to.accept_proxy = from.accept_proxy;
  to.on_access = from.on_access;
  to.host_timeout = from.host_timeout;
  to.connect_timeout = from.connect_timeout;
  to.idle_timeout = from.idle_timeout;
  to.queue_timeout = from.queue_timeout;
  to.slow_start = from.slow_start;
  to.queue_limit = from.queue_limit;
  to.max_fails = from.max_fails;
  to.fail_timeout = from.fail_timeout;
  to.check_interval = from.check_interval;
  to.check_send = from.check_send;
  to.check_expect = from.check_expect;
  to.check_rise = from.check_rise;
  to.check_fall = from.check_fall;
  to.max_backends = from.max_backends;
  to.max_admin_connections = from.max_admin_connections;
  to.admin_timeout = from.admin_timeout;
  to.max_admin_line = from.max_admin_line;
  to.max_connections = from.max_connections;
  to.max_conns_per_client = from.max_conns_per_client;
  to.level = from.level;
  to.drain_timeout = from.drain_timeout;
#if !defined(HARMONY_USE_IOCP)
  to.listen = from.listen;
#endif
}

// How long reconfigure waits for a loop to run its part: a loop never blocks, so
// only a loop that has stopped running takes this long.
inline constexpr std::chrono::seconds loop_task_wait{10};

}  // namespace detail

HARMONY_DEF std::error_code server::reconfigure(const server_options& next, std::vector<std::string>* needs_restart) {
  if (needs_restart) needs_restart->clear();
  if (auto e = check(next)) return e;
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->reconfigure(next, needs_restart);
}

inline bool server::impl::on_every_loop(const std::function<void(detail::worker&, std::size_t)>& task) {
  struct countdown {
    std::mutex mutex;
    std::condition_variable done;
    std::size_t left = 0;
  };
  auto state = std::make_shared<countdown>();
  state->left = workers.size();
  auto shared_task = std::make_shared<std::function<void(detail::worker&, std::size_t)>>(task);
  for (std::size_t i = 0; i < workers.size(); ++i) {
    detail::worker* w = workers[i].get();
    w->loop().post([state, shared_task, w, i] {
      (*shared_task)(*w, i);
      std::lock_guard<std::mutex> held(state->mutex);
      if (--state->left == 0) state->done.notify_all();
    });
  }
  std::unique_lock<std::mutex> held(state->mutex);
  return state->done.wait_for(held, detail::loop_task_wait, [&] { return state->left == 0; });
}

inline std::error_code server::impl::reconfigure(const server_options& next, std::vector<std::string>* needs_restart) {
  if (!running) {  // start() reads them all
    options = next;
    options.log = log.fn;  // the logger was made at construction and stays
  } else {
    if (on_own_thread()) return std::make_error_code(std::errc::resource_deadlock_would_occur);
    {
      std::lock_guard<std::mutex> drain_lock(drain_mutex);
      if (draining) return make_error_code(errc::shutting_down);
    }
  }
  std::vector<std::string> restart = running ? detail::restart_only_changes(options, next) : std::vector<std::string>{};
  bool move_listen = running && next.listen != options.listen &&
                     std::find(restart.begin(), restart.end(), "listen") == restart.end();
  std::vector<detail::socket_handle> listeners;
  endpoint moved_to;
  if (move_listen) {
    option_problem p;
    if (auto e = bind_listen(next.listen, listeners, moved_to, &p)) {
      log(log_level::error, "reconfigure: %s (nothing changed)", p.reason.c_str());
      return e;
    }
  }
  {
    auto table = backends.lock();
    std::int64_t now = detail::now_ms();
    if (table->get_algorithm() != next.balance) table->set_algorithm(next.balance);
    table->set_persistent(next.persistent);
    if (table->host_timeout_ms() != next.host_timeout.count()) table->set_host_timeout(next.host_timeout.count(), now);
    table->set_slow_start(next.slow_start.count());
    table->set_health(health_of(next));
    table->set_max_backends(next.max_backends);
  }
  rebuild_tables();
  log.level.store(next.level, std::memory_order_relaxed);
  per_client_limit.store(next.max_conns_per_client, std::memory_order_relaxed);
  if (!running) {
    concurrency.store(next.concurrency, std::memory_order_relaxed);
    return {};
  }
  connection_limit.store(next.max_connections ? next.max_connections
                                              : derived_max_connections(detail::descriptor_limit(), next.max_admin_connections),
                         std::memory_order_relaxed);
  apply_concurrency(next.concurrency);
  detail::relay_settings relay = detail::relay_settings::from(next);
  // By value: should a loop not run its part in time, it still may later.
  auto apply = [this, next, relay, listeners](detail::worker& w, std::size_t i) {
    w.set_settings(relay);
    if (i == 0) {
      detail::take_live_options(options, next);
      if (monitor) monitor->set_interval(next.check_interval.count());
    }
#if !defined(HARMONY_USE_IOCP)
    if (i < listeners.size() && listeners[i] != detail::invalid_socket)
      if (std::error_code e = w.replace_listener(listeners[i]))
        log(log_level::error, "loop %zu cannot watch its new listener: %s", i + 1, e.message().c_str());
#endif
  };
  if (!on_every_loop(apply)) {
    log(log_level::error, "reconfigure: a loop did not take the new options within %lld s",
        static_cast<long long>(detail::loop_task_wait.count()));
    return make_error_code(std::errc::timed_out);
  }
  resume_if_room();  // a raised max_connections
  if (move_listen) {
    log(log_level::info, "listening on %s (was %s)", moved_to.to_string().c_str(), bound_listen.to_string().c_str());
    bound_listen = moved_to;
  }
  if (needs_restart) *needs_restart = std::move(restart);
  return {};
}

}  // namespace harmony

namespace harmony {

// >>upgrade  handing the listening sockets and the registry to a successor process
inline std::error_code server::impl::adopt_listen(std::vector<detail::socket_handle>& out, option_problem* problem) {
#if defined(_WIN32)
  (void)out;
  (void)problem;
  return std::make_error_code(std::errc::not_supported);  // check() refuses inherited sockets first
#else
  std::vector<detail::socket_handle> given;
  for (std::int64_t s : options.inherited.listen) given.push_back(static_cast<detail::socket_handle>(s));
  auto fail = [&](std::error_code e, const std::string& why) {
    for (auto s : given) detail::close_socket(s);
    for (auto s : out)
      if (s != detail::invalid_socket && std::find(given.begin(), given.end(), s) == given.end()) detail::close_socket(s);
    out.clear();
    if (problem) *problem = option_problem{"listen", why + ": " + e.message()};
    return e;
  };
  out.clear();
  for (auto s : given)
    if (std::error_code e = detail::adopt_listener(s)) return fail(e, "cannot take the inherited listener " + std::to_string(s));
  detail::address where;
  if (std::error_code e = detail::local_address(given.front(), where)) return fail(e, "cannot read the inherited listener");
  std::size_t used = detail::listeners_share_port ? static_cast<std::size_t>(options.workers) : 1;
  for (std::size_t i = 0; i < static_cast<std::size_t>(options.workers); ++i) {
    if (i >= used) {
      out.push_back(detail::invalid_socket);  // dealt connections by the first loop
    } else if (i < given.size()) {
      out.push_back(given[i]);
    } else {  // more loops than the process before had: one more listener on the port
      detail::socket_handle s = detail::invalid_socket;
      if (std::error_code e = detail::open_listener(where, true, s))
        return fail(e, "cannot listen beside the inherited listener on " + where.to_endpoint().to_string());
      out.push_back(s);
    }
  }
  for (std::size_t i = used; i < given.size(); ++i) detail::close_socket(given[i]);  // fewer loops than before
  bound_listen = where.to_endpoint();
  log(log_level::info, "took over %zu inherited listener%s on %s", std::min(used, given.size()),
      std::min(used, given.size()) == 1 ? "" : "s", bound_listen.to_string().c_str());
  return {};
#endif
}

HARMONY_DEF std::error_code server::hand_out(inherited_sockets& out) {
#if defined(_WIN32)
  (void)out;
  return std::make_error_code(std::errc::not_supported);
#else
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return make_error_code(errc::not_running);
  if (impl_->on_own_thread()) return std::make_error_code(std::errc::resource_deadlock_would_occur);
  {
    std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
    if (impl_->draining) return make_error_code(errc::shutting_down);
  }
  // Each loop reads its own listener; the results outlive a wait that gives up.
  struct handed {
    std::mutex mutex;
    std::vector<std::int64_t> listen;
    std::int64_t admin = -1, stats = -1;
    std::error_code error;
  };
  auto got = std::make_shared<handed>();
  got->listen.assign(impl_->workers.size(), -1);
  server::impl* srv = impl_.get();
  bool done = impl_->on_every_loop([got, srv](detail::worker& w, std::size_t i) {
    auto take = [&](detail::socket_handle s, std::int64_t& to) {
      if (s == detail::invalid_socket) return;
      detail::socket_handle copy = detail::invalid_socket;
      std::error_code e = detail::duplicate_for_successor(s, copy);
      std::lock_guard<std::mutex> held(got->mutex);
      if (e) got->error = e;
      else to = copy;
    };
    take(w.listening_socket(), got->listen[i]);
    if (i != 0) return;
    if (srv->admin) take(srv->admin->listening_socket(), got->admin);
    if (srv->stats_port) take(srv->stats_port->listening_socket(), got->stats);
  });
  std::lock_guard<std::mutex> held(got->mutex);
  std::vector<std::int64_t> listen;
  for (std::int64_t s : got->listen)
    if (s >= 0) listen.push_back(s);
  std::error_code e = !done ? std::make_error_code(std::errc::timed_out) : got->error;
  if (!e && listen.empty()) e = make_error_code(errc::shutting_down);  // its listeners are closed
  if (e) {
    for (std::int64_t s : listen) detail::close_socket(static_cast<detail::socket_handle>(s));
    if (got->admin >= 0) detail::close_socket(static_cast<detail::socket_handle>(got->admin));
    if (got->stats >= 0) detail::close_socket(static_cast<detail::socket_handle>(got->stats));
    return e;
  }
  out.listen = std::move(listen);
  out.admin = got->admin;
  out.stats = got->stats;
  return {};
#endif
}

HARMONY_DEF std::error_code server::save_state(const std::string& path) {
  return detail::replace_file(path, impl_->state_text());
}

HARMONY_DEF drain_report server::hand_over(duration deadline) {
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (!impl_->running) return {};
    server::impl* srv = impl_.get();
    if (srv->keeper) {
      srv->backends.lock()->on_change(nullptr);
      srv->keeper->stop(false);
      srv->keeper.reset();
    }
    srv->workers.front()->loop().post([srv] {
      if (srv->admin) srv->admin->hand_over();
      if (srv->stats_port) srv->stats_port->hand_over();
    });
    srv->log(log_level::info, "handing over to the successor: the admin and stats ports are its own now");
  }
  return shutdown(deadline);
}

}  // namespace harmony

namespace harmony {

// >>client-impl  harmony::client: one event loop, one link per balancer
// Each balancer has a link of its own: its stream, heartbeat, backoff and
// reconnects, independent of the others. The identity is shared: the first
// balancer that assigns an id defines it, and every other link registers under it
// (`register ... id=ID`). Until one exists, only one link at a time registers
// without an id; the others wait connected (one heartbeat interval at most), so
// that two balancers do not hand out two ids at once.
struct client::impl {
  enum class state { idle, connecting, authenticating, waiting, registering, registered, closing, closed };

  struct link {
    link(impl& o, std::size_t i, std::string a) : owner(o), index(i), address(std::move(a)), io(o.loop) {
      beat.fire = [this] { owner.on_beat(*this); };
      retry.fire = [this] { owner.connect_now(*this); };
    }
    link(const link&) = delete;
    link& operator=(const link&) = delete;

    impl& owner;
    std::size_t index;  // into statuses
    std::string address;
    detail::stream io;
    detail::line_splitter lines{4096};
    detail::timer beat, retry;
    state phase = state::idle;
    std::string asked;            // the id its register asked for; empty: none
    bool asked_without_id = false;  // a register without an id is in flight on it
    int sent_weight = 0;          // the weight its register carried
    std::int64_t backoff = 100;
    std::int64_t last_heard = 0;
    std::string id;  // the id this balancer knows the backend by
    bool outage = false;  // the balancer cannot be reached: said once, and once when it can again
  };

  explicit impl(client_options o) : options(std::move(o)), log{options.log, options.level} {
    give_up.fire = [this] { loop.stop(); };
    std::vector<std::string> addresses = options.balancers;
    if (addresses.empty()) addresses.push_back(options.balancer);
    for (std::size_t i = 0; i < addresses.size(); ++i) {
      links.push_back(std::make_unique<link>(*this, i, addresses[i]));
      balancer_status s;
      s.balancer = addresses[i];
      statuses.push_back(std::move(s));
    }
  }

  void connect_now(link& l) {
    endpoint at;
    detail::address to;
    std::error_code e = parse_endpoint(l.address, at);
    if (!e) e = detail::resolve(at, to, false);
    if (!e) {
      l.phase = state::connecting;
      l.lines = detail::line_splitter{4096};
      e = l.io.connect(to);
    }
    if (e) unreachable(l, e);
  }

  // Logged at warn once per outage (later attempts at debug), then retried with backoff.
  void unreachable(link& l, std::error_code e) {
    log(l.outage ? log_level::debug : log_level::warn, "agent: cannot reach the balancer %s: %s (retrying)",
        l.address.c_str(), e.message().c_str());
    l.outage = true;
    schedule_retry(l);
  }

  void on_connect(link& l, std::error_code e) {
    if (e) return unreachable(l, e);
    if (l.outage) log(log_level::info, "agent: reached the balancer %s again", l.address.c_str());
    l.outage = false;
    l.last_heard = loop.now();
    l.io.write("hello harmony/1\n");
    loop.schedule(l.beat, loop.now() + options.ack.count());
    // With a secret, hello's reply carries the nonce to answer before registering.
    if (!options.secret.empty()) {
      l.phase = state::authenticating;
      return;
    }
    try_register(l);
  }

  // hello's reply, with a secret: the proof for its nonce, then the registration
  // right behind it (the balancer ends the connection if the proof is wrong).
  void on_hello(link& l, const detail::command_line& c) {
    std::string_view nonce;
    if (c.option("nonce", nonce)) {
      l.io.write("auth " + detail::admin_auth_proof(options.secret, nonce) + "\n");
    } else {
      log(log_level::debug, "agent: %s asks for no secret", l.address.c_str());
    }
    try_register(l);
  }

  // Registers under the id this balancer knows, else under the identity; without
  // either it asks for a new id, unless another link already does.
  // A link waits at most one heartbeat interval (`force`): a balancer that never
  // answers must not keep the others unregistered.
  void try_register(link& l, bool force = false) {
    std::string wanted = l.id.empty() ? id() : l.id;
    if (wanted.empty() && !force)
      for (auto& other : links)
        if (other.get() != &l && other->asked_without_id) {
          l.phase = state::waiting;
          return;
        }
    l.phase = state::registering;
    l.asked = wanted;
    l.asked_without_id = wanted.empty();
    l.sent_weight = options.weight;
    std::string line = "register port=" + std::to_string(options.port) + " weight=" + std::to_string(options.weight) +
                       " heartbeat=" + std::to_string(options.ack.count()) + "ms";
    if (!wanted.empty()) line += " id=" + wanted;
    if (!options.host.empty()) line += " host=" + options.host;
    if (options.proxy != proxy_protocol::none) line += std::string(" proxy=") + to_string(options.proxy);
    l.io.write(line + "\n");
  }

  // Links that wait for the identity, or for their turn to ask for one.
  void release_waiters() {
    for (auto& l : links)
      if (l->phase == state::waiting) try_register(*l);
  }

  void on_line(link& l, std::string_view line) {
    l.last_heard = loop.now();
    detail::command_line c = detail::parse_command(line);
    if (c.verb == "notice") {
      log(log_level::warn, "agent: balancer %s says: %.*s", l.address.c_str(), static_cast<int>(line.size()), line.data());
      return;
    }
    std::string_view value;
    if (c.verb == "ok" && !c.args.empty() && c.args[0] == "harmony/1" && options.secret.empty() &&
        c.option("nonce", value))
      log(log_level::error, "agent: %s requires a secret (client_options::secret, --secret-file)", l.address.c_str());
    if (c.verb == "err") {
      log(log_level::warn, "agent: balancer %s says: %.*s", l.address.c_str(), static_cast<int>(line.size()), line.data());
      if (l.phase == state::registering || l.phase == state::authenticating) return drop(l, false);
      // A close the balancer cannot do (the backend is gone already) is done all the same.
      if (l.phase == state::closing && !c.args.empty() && (c.args[0] == "unknown-backend" || c.args[0] == "not-registered"))
        return finish(l);
      return;
    }
    if (c.verb == "ok" && l.phase == state::authenticating) return on_hello(l, c);
    if (c.verb == "ok" && l.phase == state::registering && c.option("id", value)) return registered_as(l, value);
    if (c.verb == "ok" && l.phase == state::closing && !c.args.empty() && c.args[0] == "closed") finish(l);
  }

  void registered_as(link& l, std::string_view value) {
    std::string new_id(value);
    if (!l.asked.empty() && new_id != l.asked)
      log(log_level::warn, "agent: %s refused the id %s (taken): registered as %s there", l.address.c_str(),
          l.asked.c_str(), new_id.c_str());
    l.id = new_id;
    l.asked_without_id = false;
    l.phase = state::registered;
    l.backoff = options.reconnect_min.count();
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (identity.empty()) identity = new_id;
      balancer_status& s = statuses[l.index];
      s.id = new_id;
      s.registered = true;
      ++s.registrations;
    }
    log(log_level::info, "agent: registered as %s with %s", new_id.c_str(), l.address.c_str());
    // What changed since the register line went, and what register does not carry.
    std::string report;
    if (l.sent_weight != options.weight) report += " weight=" + std::to_string(options.weight);
    if (reported || options.maxconn != 0) report += " maxconn=" + std::to_string(options.maxconn);
    if (reported || options.state != readiness::ready) report += std::string(" state=") + to_string(options.state);
    if (!report.empty()) l.io.write("report" + report + "\n");
    release_waiters();
    if (options.on_registered) options.on_registered(new_id);
  }

  void on_closed(link& l, std::error_code e) {
    if (l.phase == state::closing || l.phase == state::closed) return finish(l);
    log(log_level::warn, "agent: lost the balancer %s%s%s", l.address.c_str(), e ? ": " : "",
        e ? e.message().c_str() : "");
    l.outage = true;  // said: the failed reconnects that follow are not
    drop(l, false);
  }

  // Every ack interval: a ping, and a check that the balancer answered the last ones.
  void on_beat(link& l) {
    if (l.phase != state::waiting && l.phase != state::registering && l.phase != state::registered &&
        l.phase != state::authenticating)
      return;
    std::int64_t now = loop.now();
    if (l.phase == state::waiting) try_register(l, true);
    if (now - l.last_heard > 2 * options.ack.count() + 1000) {
      log(log_level::warn, "agent: no answer from %s, reconnecting", l.address.c_str());
      return drop(l, true);
    }
    if (l.phase == state::authenticating) return loop.schedule(l.beat, now + options.ack.count());  // no ping before auth
    l.io.write("ping\n");
    loop.schedule(l.beat, now + options.ack.count());
  }

  // Ends the link's connection and tries again later; a link that was asking for
  // the identity hands that turn to a waiting one.
  void drop(link& l, bool reset) {
    l.io.close(reset);
    set_registered(l, false);
    bool was_asking = l.asked_without_id;
    l.asked_without_id = false;
    schedule_retry(l);
    if (was_asking) release_waiters();
  }

  void schedule_retry(link& l) {
    l.phase = state::idle;
    loop.cancel(l.beat);
    loop.schedule(l.retry, loop.now() + l.backoff);
    l.backoff = std::min<std::int64_t>(l.backoff * 2, options.reconnect_max.count());
  }

  // close(): every registered link deregisters; the loop stops when all have
  // answered, or after two seconds in all.
  void begin_close() {
    bool waiting = false;
    for (auto& p : links) {
      link& l = *p;
      loop.cancel(l.retry);
      loop.cancel(l.beat);
      if (l.phase == state::registered && l.io.is_open()) {
        l.phase = state::closing;
        l.io.write("close\n");
        waiting = true;
      } else {
        l.io.close();
        l.phase = state::closed;
      }
    }
    if (!waiting) return loop.stop();
    loop.schedule(give_up, loop.now() + 2000);
  }

  void finish(link& l) {
    l.io.close();
    l.phase = state::closed;
    set_registered(l, false);
    for (auto& other : links)
      if (other->phase != state::closed) return;
    loop.stop();
  }

  // set_weight, set_state, set_maxconn: `apply` changes the options (remembered for
  // later registrations) and `line` tells every balancer registered now.
  template <class Apply>
  std::error_code change(Apply apply, std::string line) {
    std::lock_guard<std::mutex> lock(lifecycle);
    if (!running) {
      apply(*this);
      return {};
    }
    loop.post([this, apply, line] {
      apply(*this);
      for (auto& l : links)
        if (l->phase == state::registered) l->io.write(line);
    });
    return {};
  }

  void set_registered(link& l, bool on) {
    std::lock_guard<std::mutex> lock(mutex);
    statuses[l.index].registered = on;
  }
  std::string id() const {
    std::lock_guard<std::mutex> lock(mutex);
    return identity;
  }

  client_options options;
  detail::logger log;
  detail::reactor loop;
  std::vector<std::unique_ptr<link>> links;
  detail::timer give_up;
  std::thread thread;
  bool reported = false;  // set_state or set_maxconn was called: report both after each registration
  mutable std::mutex mutex;  // guards identity and statuses
  std::string identity;
  std::vector<balancer_status> statuses;
  bool running = false;
  std::mutex lifecycle;
};

HARMONY_DEF client::client(client_options options) : impl_(std::make_unique<impl>(std::move(options))) {}

HARMONY_DEF client::~client() { close(); }

HARMONY_DEF std::error_code client::start() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) return make_error_code(errc::already_running);
  if (impl_->loop.stopping()) return make_error_code(errc::shutting_down);  // closed agents stay closed
  const client_options& o = impl_->options;
  if (auto e = check(o)) return e;
  if (auto e = impl_->loop.open()) return e;
  impl* p = impl_.get();
  p->loop.on_error = [p](std::error_code e) { p->log(log_level::error, "agent: event loop: %s", e.message().c_str()); };
  for (auto& owned : p->links) {
    impl::link* l = owned.get();
    l->backoff = o.reconnect_min.count();
    l->io.on_connect = [p, l](std::error_code e) { p->on_connect(*l, e); };
    l->io.on_close = [p, l](std::error_code e) { p->on_closed(*l, e); };
    l->io.on_data = [p, l](std::string_view bytes) {
      if (!l->lines.feed(bytes, [p, l](std::string_view line) { p->on_line(*l, line); })) {
        p->log(log_level::warn, "agent: %s sent a line that is too long", l->address.c_str());
        p->drop(*l, true);
      }
    };
    p->loop.post([p, l] { p->connect_now(*l); });
  }
  p->running = true;
  p->thread = std::thread([p] { p->loop.run(); });
  return {};
}

HARMONY_DEF std::error_code client::close() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return make_error_code(errc::not_running);
  impl* p = impl_.get();
  p->loop.post([p] { p->begin_close(); });
  if (p->thread.get_id() == std::this_thread::get_id()) return {};  // from a callback: cannot wait for itself
  p->thread.join();
  for (auto& l : p->links) l->io.close();
  p->loop.settle();
  p->running = false;
  for (auto& l : p->links) p->set_registered(*l, false);
  return {};
}

HARMONY_DEF std::error_code client::set_weight(int weight) {
  if (weight < min_weight || weight > max_weight) return make_error_code(errc::bad_option);
  return impl_->change([weight](impl& p) { p.options.weight = weight; }, "weight " + std::to_string(weight) + "\n");
}

HARMONY_DEF std::error_code client::set_state(readiness state) {
  if (state != readiness::ready && state != readiness::drain && state != readiness::down)
    return make_error_code(errc::bad_option);
  return impl_->change(
      [state](impl& p) {
        p.options.state = state;
        p.reported = true;
      },
      std::string("report state=") + to_string(state) + "\n");
}

HARMONY_DEF std::error_code client::set_maxconn(int maxconn) {
  if (maxconn < 0 || maxconn > max_maxconn) return make_error_code(errc::bad_option);
  return impl_->change(
      [maxconn](impl& p) {
        p.options.maxconn = maxconn;
        p.reported = true;
      },
      "report maxconn=" + std::to_string(maxconn) + "\n");
}

HARMONY_DEF std::string client::id() const { return impl_->id(); }

HARMONY_DEF bool client::registered() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  for (const balancer_status& s : impl_->statuses)
    if (s.registered) return true;
  return false;
}

HARMONY_DEF std::vector<balancer_status> client::status() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->statuses;
}

}  // namespace harmony

namespace harmony {

// >>admin-call  harmony::admin_command: one operator command, handshake included
// What `harmonyd ctl` runs: a reactor of its own on the calling thread, one stream,
// the native dialect's hello, the proof when the balancer asks for one, the command,
// and its reply up to the final "ok"/"err" line.
HARMONY_DEF std::string admin_proof(std::string_view secret, std::string_view nonce) {
  return detail::admin_auth_proof(secret, nonce);
}

HARMONY_DEF std::error_code admin_command(std::string_view admin, std::string_view command, std::string* reply,
                                          std::string_view secret, duration timeout) {
  if (reply) reply->clear();
  if (command.find_first_of("\r\n") != std::string_view::npos || timeout.count() <= 0)
    return make_error_code(errc::bad_option);
  endpoint at;
  detail::address to;
  if (auto e = parse_endpoint(admin, at)) return e;
  if (auto e = detail::resolve(at, to, false)) return e;
  detail::reactor loop;
  if (auto e = loop.open()) return e;
  enum class step { hello, proof, reply, done };
  step now = step::hello;
  std::error_code result;
  std::string text;
  detail::stream io(loop);
  detail::line_splitter lines{65536};
  detail::timer give_up;
  auto finish = [&](std::error_code e) {
    if (now == step::done) return;
    now = step::done;
    result = e;
    io.close();
    loop.stop();
  };
  auto on_line = [&](std::string_view line) {
    if (now == step::done) return;
    detail::command_line c = detail::parse_command(line);
    if (now == step::hello) {
      std::string_view nonce;
      if (c.verb != "ok" || c.args.empty() || c.args[0] != "harmony/1") {
        text.append(line.data(), line.size()).append("\n");
        return finish(make_error_code(errc::protocol));
      }
      bool asked = c.option("nonce", nonce);
      if (asked && !secret.empty()) io.write("auth " + detail::admin_auth_proof(secret, nonce) + "\n");
      io.write(std::string(command) + "\n");
      now = asked && !secret.empty() ? step::proof : step::reply;
      return;
    }
    if (now == step::proof) {
      if (c.verb == "ok") {
        now = step::reply;
        return;
      }
      text.append(line.data(), line.size()).append("\n");
      return finish(make_error_code(errc::unauthorized));
    }
    text.append(line.data(), line.size()).append("\n");
    if (c.verb == "ok" || c.verb == "pong") return finish({});
    if (c.verb == "err") {
      bool auth = !c.args.empty() && c.args[0].substr(0, 5) == "auth-";
      return finish(make_error_code(auth ? errc::unauthorized : errc::protocol));
    }
  };
  give_up.fire = [&] { finish(make_error_code(std::errc::timed_out)); };
  io.on_connect = [&](std::error_code e) {
    if (e) return finish(e);
    io.write("hello harmony/1\n");
  };
  io.on_close = [&](std::error_code e) { finish(e ? e : make_error_code(errc::protocol)); };
  io.on_data = [&](std::string_view bytes) {
    if (!lines.feed(bytes, on_line)) finish(make_error_code(errc::protocol));
  };
  loop.schedule(give_up, detail::now_ms() + timeout.count());
  if (auto e = io.connect(to)) finish(e);
  if (now != step::done) loop.run();
  loop.cancel(give_up);
  io.close();
  loop.settle();
  if (reply) *reply = std::move(text);
  return result;
}

}  // namespace harmony

#endif  // HARMONY_IMPLEMENTATION_INCLUDED
#endif

#endif  // HARMONY_HPP

// >>licence  MIT
// MIT License
//
// Copyright (c) 2026 the Harmony authors
//
// Permission is hereby granted, free of charge, to any person obtaining a copy of this
// software and associated documentation files (the "Software"), to deal in the Software
// without restriction, including without limitation the rights to use, copy, modify,
// merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
// permit persons to whom the Software is furnished to do so, subject to the following
// conditions:
//
// The above copyright notice and this permission notice shall be included in all copies
// or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
// INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
// PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
// HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
// CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
// OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
