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
