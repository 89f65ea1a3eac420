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
