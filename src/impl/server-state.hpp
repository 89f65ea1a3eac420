namespace harmony {

namespace detail {
class admin_server;
class worker;
}  // namespace detail

// >>server-state  the state a server shares between its loops
struct server::impl {
  explicit impl(server_options o)
      : options(std::move(o)),
        log{options.log, options.level},
        backends(options.balance, options.host_timeout, options.persistent, limits_of(options), detail::random_id),
        concurrency(options.concurrency) {
    backends.lock()->set_slow_start(options.slow_start.count());
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

  std::error_code open();
  void close_all();
  server_stats collect_stats() const;
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
  std::error_code add_name(std::string_view address, int weight);
  void start_resolver();  // under lifecycle, once the loops are open
  void stop_resolver();
  void apply(const detail::resolution& r);  // on the first loop

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
  void load_state();   // once, before the ports open
  void start_keeper();  // under lifecycle, with a state file
  std::string state_text();  // the state file's text now

  server_options options;
  detail::logger log;
  detail::locked<detail::registry> backends;  // shared by every loop: lock() for each use
  std::atomic<int> concurrency;
  std::atomic<std::int64_t> proxied{0};
  std::atomic<std::int64_t> waiting{0};
  std::vector<std::unique_ptr<detail::worker>> workers;
  std::unique_ptr<detail::admin_server> admin;
  std::vector<detail::resolver_name> names;      // under lifecycle
  std::unique_ptr<detail::resolver> resolver;    // while running, when there are names
  std::vector<detail::discovery> discoveries;    // by name; touched on the first loop only
  std::vector<std::thread> threads;
  std::mutex lifecycle;
  bool running = false;
  bool caller_runs_loop = false;
  endpoint bound_listen;
  endpoint bound_admin;
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
