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
  // down), "expired" (no ack within the host timeout), "offline" (its agent's connection
  // dropped), "no-port" (no service port yet)
  std::string state;
  // The NAME:PORT it was resolved from (server::add_backend_name); empty otherwise.
  std::string source;
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
};

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
// server::shutdown()'s deadline (server_options::drain_timeout), from 0 (stop at once) to a day.
inline constexpr duration default_drain_timeout{30000};
inline constexpr duration max_drain_timeout{86400000};

// What a graceful stop (server::shutdown) found and did.
struct drain_report {
  std::uint64_t open = 0;      // client connections open (or queued) when it began
  std::uint64_t finished = 0;  // of those and any still being taken in, the ones that ended on their own
  std::uint64_t cut = 0;       // closed at the deadline (or by stop())
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
  duration connect_timeout{5000};   // a backend connect that hangs longer is a failure
  duration idle_timeout{600000};    // a proxied connection without traffic is closed
  duration queue_timeout{30000};    // longest wait in the concurrency queue
  // A backend that joins or comes back ramps its effective weight from 1/16 up to its
  // weight over this long, so leastconn does not flood it; 0 (the default) is off.
  duration slow_start{0};
  std::size_t queue_limit = 10000;  // longest concurrency queue
  duration resolve_interval = default_resolve_interval;  // names of add_backend_name are resolved again this often
  std::size_t buffer_bytes = HARMONY_DEFAULT_BUFFER_BYTES;            // relay buffer per direction
  std::size_t bulk_buffer_bytes = HARMONY_DEFAULT_BULK_BUFFER_BYTES;  // once a direction streams
  // Linux: a streaming direction moves socket to pipe to socket inside the kernel
  // (splice(2), pooled pipes) instead of through a buffer: less CPU per byte, but
  // over loopback the receiver gets smaller segments (see README, Performance).
  // Used on the server's own threads (they block SIGPIPE) and on a thread calling
  // run() where SIGPIPE is ignored or blocked. Ignored elsewhere.
  bool splice = false;
  int workers = 1;                  // event-loop threads sharing the listen port
  std::size_t max_backends = 10000;          // registrations beyond this are refused
  std::size_t max_admin_connections = 256;   // admin connections beyond this are closed
  duration admin_timeout{30000};             // an admin connection silent this long is closed
  std::string admin_secret;                  // reserved for authenticated admin (not yet enforced)
  bool allow_legacy = false;                 // with a secret set, still accept harmony.js agents (they cannot authenticate)
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

  // Binds the ports and runs the event loops on threads of its own.
  std::error_code start();
  // Binds the ports and runs the first event loop on the calling thread until stop().
  std::error_code run();
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

  // Bound addresses (useful with port 0); empty before start().
  endpoint listen_endpoint() const;
  endpoint admin_endpoint() const;

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
  // errc::bad_address for a malformed NAME:PORT, errc::bad_option for port 0 or a bad weight.
  std::error_code add_backend_name(std::string_view address, int weight = default_weight);
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
