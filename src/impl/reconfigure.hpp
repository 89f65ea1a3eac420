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
