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
