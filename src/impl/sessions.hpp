namespace harmony {
namespace detail {

// >>sessions  the bodies of the pump and the worker (they need the server state)
inline void session::open(socket_handle fd, const address& peer) {
  client_.reset();
  backend_.reset();
  client_.fd = fd;
  up_ = direction{};
  down_ = direction{};
  current_ = lease{};
  tried_.clear();
  attempts_ = 0;
  holds_slot_ = false;
  peer_ = peer;
  sent_to_backend_ = received_from_backend_ = spliced_ = 0;
  replayable_ = true;
  farewell_.clear();
  farewell_sent_ = 0;
  last_activity_ = worker_.loop().now();
}

inline void session::admit() {
  server::impl& srv = worker_.owner();
  if (srv.try_take_slot()) {
    holds_slot_ = true;
    return start_attempt();
  }
  if (worker_.waiting() >= worker_.options().queue_limit) return unavailable(make_error_code(errc::queue_full));
  phase_ = phase::queued;
  queued_at = worker_.loop().now();
  worker_.enqueue(this);
  worker_.loop().schedule(clock_, queued_at + worker_.options().queue_timeout.count());
}

inline void session::leave_queue_for_attempt() {
  worker_.loop().cancel(clock_);
  holds_slot_ = true;
  start_attempt();
}

inline void session::start_attempt() {
  reactor& loop = worker_.loop();
  pick_result pick;
  std::string key = peer_.host_key();
  if (!worker_.owner().backends.lock()->pick(loop.now(), key, tried_, pick))
    return unavailable(make_error_code(attempts_ ? errc::attempts_exhausted : errc::no_backend));
  current_ = pick.chosen;
  address to = to_os_address(pick.to);
  phase_ = phase::connecting;
#if !defined(HARMONY_USE_IOCP)
  if (attempts_ == 0 && !up_.data && !up_.eof && !read_ahead()) return;
#endif
  socket_handle s = invalid_socket;
  bool done = false;
  if (std::error_code e = begin_connect(to, s, done)) return attempt_failed(e);
  backend_.reset();
  backend_.fd = s;
  register_side(backend_, io_write);
#if defined(HARMONY_USE_IOCP)
  loop.connect(s, &backend_, to);  // a failure, even an immediate one, comes back as a completion
#else
  if (!done && up_.begin < up_.end && !send_while_connecting()) return;
#endif
  if (done) return connected();
  loop.schedule(clock_, loop.now() + worker_.options().connect_timeout.count());
}

// A client has usually sent its first bytes by the time it is accepted, and a
// connect over loopback or a LAN has often completed when connect() returns.
// Reading before the connect and writing right after it saves the two loop
// turns that would wait for those events; where a guess is wrong, the events
// take over. False when the connection has ended.
inline bool session::read_ahead() {
  buffer_pool& pool = worker_.pool();
  char* buffer = pool.take(false);
  auto n = recv_some(client_.fd, buffer, pool.size(false));
  if (n > 0) {
    up_.data = buffer;
    up_.end = static_cast<std::uint32_t>(n);
    took_in(client_, static_cast<std::size_t>(n));
    if (static_cast<std::size_t>(n) == pool.size(false)) up_.bulk = client_.readable = true;  // more may follow
    return true;
  }
  pool.give(buffer, false);
  if (n == 0) {
    up_.eof = true;
    return true;
  }
  int e = last_socket_error();
  if (would_block(e) || e == EINTR) return true;
  close(true);  // the client is gone already
  return false;
}

// Only a connected socket takes bytes, so a send that succeeds ends the connect.
// True while the connect is still pending.
inline bool session::send_while_connecting() {
  auto n = send_some(backend_.fd, up_.data + up_.begin, up_.end - up_.begin);
  if (n > 0) {
    up_.begin += static_cast<std::uint32_t>(n);
    put_out(backend_, static_cast<std::size_t>(n));
    connected();
    return false;
  }
  int e = last_socket_error();
  if (would_block(e) || e == EINTR) return true;  // still connecting: the writable event says when
  attempt_failed(system_error_code(e));
  return false;
}

inline void session::register_side(side& s, unsigned interest) {
  if (s.registered) return worker_.loop().interest(s.fd, &s, interest);
  s.registered = true;
  worker_.loop().add(s.fd, &s, interest);
}

inline void session::connected() {
  reactor& loop = worker_.loop();
  phase_ = phase::relaying;
  backend_.writable = true;
#if defined(HARMONY_USE_IOCP)
  client_.writable = true;  // no readiness event will say so: writable means "no send in flight"
#endif
  register_side(client_, io_read);
  last_activity_ = loop.now();
  loop.schedule(clock_, last_activity_ + worker_.options().idle_timeout.count());
  pump();
}

// A failed attempt is retried from a timer, after this loop turn: any stale event
// of the closed socket is then gone and cannot be mistaken for the new one.
inline void session::attempt_failed(std::error_code why) {
  reactor& loop = worker_.loop();
  server::impl& srv = worker_.owner();
  worker_.stats.connect_failures.fetch_add(1, std::memory_order_relaxed);
  std::string id = srv.backends.lock()->id_of(current_);
  srv.log(log_level::warn, "backend %s failed for %s: %s", id.c_str(), peer_.to_endpoint().to_string().c_str(),
          why.message().c_str());
  if (srv.options.on_backend_error) srv.options.on_backend_error(id, why);
  srv.backends.lock()->release(current_, true);
  tried_.push_back(current_);
  current_ = lease{};
  if (backend_.fd != invalid_socket) {
    if (backend_.registered) loop.remove(backend_.fd);
    close_socket(backend_.fd);
    backend_.reset();
  }
  // The next backend gets everything the failed one was sent, from the start.
  up_.begin = 0;
  up_.shut = false;
  sent_to_backend_ = 0;
  replayable_ = true;
  ++attempts_;
  if (attempts_ > srv.options.requeue) return unavailable(make_error_code(errc::attempts_exhausted));
  phase_ = phase::retrying;
  loop.schedule(clock_, loop.now());
}

inline void session::on_clock() {
  reactor& loop = worker_.loop();
  switch (phase_) {
    case phase::queued:
      worker_.dequeue(this);
      return unavailable(make_error_code(errc::queue_timeout));
    case phase::retrying: return start_attempt();
    case phase::connecting: return attempt_failed(make_error_code(errc::connect_timeout));
    case phase::relaying: {
      std::int64_t deadline = last_activity_ + worker_.options().idle_timeout.count();
      if (loop.now() >= deadline) {
        worker_.owner().log(log_level::debug, "idle timeout for %s", peer_.to_endpoint().to_string().c_str());
        return close(false);
      }
      return loop.schedule(clock_, deadline);
    }
    case phase::farewell: return close(false);
    case phase::idle: return;
  }
}

inline void session::on_side_io(side& s, unsigned events) {
  if (events & io_read) s.readable = true;
  if (events & io_write) s.writable = true;
  if (events & io_peer_closed) s.peer_closed = true;
  if (events & io_error) s.failed = true;
#if defined(HARMONY_USE_IOCP)
  // A completed overlapped send wrote its bytes. A failed operation carries the
  // socket's error, which the plain calls might never report again.
  if (s.iocp.sent) {
    std::uint32_t n = s.iocp.sent;
    s.iocp.sent = 0;
    if (phase_ == phase::farewell) {
      farewell_sent_ += n;
    } else {
      direction& d = &s == &backend_ ? up_ : down_;
      d.begin += n;
      if (&s == &backend_) sent_to_backend_ += n;
      last_activity_ = worker_.loop().now();
    }
  }
  if ((events & io_error) && phase_ == phase::relaying) return fail(s, s.iocp.error);
  if ((events & io_error) && phase_ == phase::farewell) return close(true);
#endif
  switch (phase_) {
    case phase::connecting:
      if (&s == &backend_ && (events & (io_write | io_error))) {
#if defined(HARMONY_USE_IOCP)
        // ConnectEx's completion carries the outcome.
        std::error_code e = s.iocp.error ? system_error_code(s.iocp.error) : std::error_code{};
#else
        // Writable without an error means connected; only an error needs asking for.
        std::error_code e;
        if (s.failed) e = pending_socket_error(backend_.fd);
#endif
        if (e) return attempt_failed(e);
        worker_.loop().cancel(clock_);
        return connected();
      }
      return;
    case phase::relaying: return pump();
    case phase::farewell: return farewell_pump();
    default: return;
  }
}

inline void session::pump() {
  if (!flow(up_, client_, backend_)) return;
  bool was_replayable = replayable_;
  if (!flow(down_, backend_, client_)) return;
  // The backend's first answer ends the replay window: drop the kept request now,
  // so an idle connection holds no buffer.
  if (was_replayable && !replayable_ && up_.data && up_.begin == up_.end) {
    worker_.pool().give(up_.data, up_.large);
    up_.data = nullptr;
    up_.begin = up_.end = 0;
  }
  if (up_.shut && down_.shut) return close(false);
  if (reactor::tracks_interest) update_interest();
}

// What a side waits for: readable when its outgoing direction may read, writable
// when its incoming direction has bytes waiting.
inline void session::update_interest() {
  auto wants = [](const direction& out, const direction& in) {
    unsigned w = 0;
    if (!out.eof && !out.holds_bytes()) w |= io_read;
    if (in.holds_bytes()) w |= io_write;
    return w;
  };
  worker_.loop().interest(client_.fd, &client_, wants(up_, down_));
  worker_.loop().interest(backend_.fd, &backend_, wants(down_, up_));
}

inline void session::took_in(const side& src, std::size_t n) {
  if (&src == &backend_) {
    received_from_backend_ += n;
    replayable_ = false;
  }
  last_activity_ = worker_.loop().now();
}

inline void session::put_out(const side& dst, std::size_t n) {
  if (&dst == &backend_) sent_to_backend_ += n;
  last_activity_ = worker_.loop().now();
}

// A socket call in flow() failed: "would block" clears the readiness flag and
// waits for the next event, EINTR calls again, anything else fails the connection.
inline session::next_step session::after_call_error(side& s, bool& ready, int error) {
  if (would_block(error)) {
    ready = false;
    return next_step::wait;
  }
  if (error == EINTR) return next_step::call_again;
  fail(s, error);
  return next_step::failed;
}

inline bool session::flow(direction& d, side& src, side& dst) {
  buffer_pool& pool = worker_.pool();
  for (;;) {
#if defined(__linux__)
    if (d.piped) {
      if (!dst.writable) return true;
      ssize_t n = ::splice(d.pipe.read, nullptr, dst.fd, nullptr, d.piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n <= 0) {
        switch (after_call_error(dst, dst.writable, n == 0 ? EPIPE : errno)) {
          case next_step::wait: return true;
          case next_step::call_again: continue;
          case next_step::failed: return false;
        }
      }
      d.piped -= static_cast<std::uint32_t>(n);
      spliced_ += static_cast<std::uint64_t>(n);
      put_out(dst, static_cast<std::size_t>(n));
      continue;
    }
#endif
    if (d.begin < d.end) {
      if (!dst.writable) return true;
      auto n = send_some(dst.fd, d.data + d.begin, d.end - d.begin);
      if (n < 0) {
        switch (after_call_error(dst, dst.writable, last_socket_error())) {
          case next_step::wait:
#if defined(HARMONY_USE_IOCP)
            worker_.loop().send(dst.fd, &dst, d.data + d.begin, d.end - d.begin);
#endif
            return true;
          case next_step::call_again: continue;
          case next_step::failed: return false;
        }
      }
      d.begin += static_cast<std::uint32_t>(n);
      put_out(dst, static_cast<std::size_t>(n));
      if (d.begin < d.end) {
        dst.writable = false;
#if defined(HARMONY_USE_IOCP)
        worker_.loop().send(dst.fd, &dst, d.data + d.begin, d.end - d.begin);
#endif
        return true;
      }
      continue;
    }
    if (d.data) {
      // Until the backend answers, what it was sent stays in the buffer, so a
      // backend that fails now can be replaced and the bytes sent again.
      bool keep = &d == &up_ && replayable_ && d.end < pool.size(d.large);
      if (!keep) {
        if (&d == &up_) replayable_ = false;
        pool.give(d.data, d.large);
        d.data = nullptr;
        d.begin = d.end = 0;
      }
    }
    if (d.eof) {
      if (!d.shut) {
        // When the other way is finished too the connection is about to close,
        // and closing sends this FIN anyway.
        const direction& other = &d == &up_ ? down_ : up_;
        if (!other.shut) ::shutdown(dst.fd, SHUT_WR);
        d.shut = true;
      }
      return true;
    }
    if (!src.readable) return true;
#if defined(__linux__)
    // A streaming direction goes socket to pipe to socket inside the kernel. What
    // the backend was sent stays in the buffer while it may have to be replayed.
    if (d.bulk && !d.data && !(&d == &up_ && replayable_) && worker_.may_splice() &&
        (d.pipe.valid() || worker_.pipes().take(d.pipe))) {
      ssize_t n = ::splice(src.fd, nullptr, d.pipe.write, nullptr, d.pipe.capacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d.piped = static_cast<std::uint32_t>(n);
        if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
        took_in(src, static_cast<std::size_t>(n));
        // A short splice does not prove the socket drained (the pipe may run out of
        // slots first), so the source stays readable until a splice finds nothing.
        continue;
      }
      int e = n == 0 ? 0 : errno;
      if (n == 0 || would_block(e)) worker_.pipes().give(d.pipe, true);  // nothing in flight: no pipe held
      if (n == 0) {
        d.eof = true;
        src.readable = false;
        continue;
      }
      switch (after_call_error(src, src.readable, e)) {
        case next_step::wait: return true;
        case next_step::call_again: continue;
        case next_step::failed: return false;
      }
    }
#endif
    if (!d.data) d.large = d.bulk;
    char* buffer = d.data ? d.data : pool.take(d.large);
    std::size_t room = pool.size(d.large) - d.end;
    auto n = recv_some(src.fd, buffer + d.end, room);
    if (n > 0) {
      d.data = buffer;
      d.end += static_cast<std::uint32_t>(n);
      if (static_cast<std::size_t>(n) == room) d.bulk = true;
      else if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
      took_in(src, static_cast<std::size_t>(n));
      // With edge-triggered readiness a short read means "drained". If the peer's
      // FIN had already arrived, nothing can follow: that was the end of the stream.
      // A pending error (a reset behind the data) raises no further event, so the
      // source stays readable until a read reports it.
      if (static_cast<std::size_t>(n) < room && !src.failed) {
        src.readable = false;
        if (src.peer_closed) d.eof = true;
      }
      continue;
    }
    if (!d.data || d.end == 0) {
      pool.give(buffer, d.large);
      d.data = nullptr;
      d.begin = d.end = 0;
    }
    if (n == 0) {
      d.eof = true;
      src.readable = false;
      continue;
    }
    switch (after_call_error(src, src.readable, last_socket_error())) {
      case next_step::wait: return true;
      case next_step::call_again: continue;
      case next_step::failed: return false;
    }
  }
}

inline void session::fail(side& where, int error) {
  // A backend that breaks before its first byte is a failed attempt: the client
  // has lost nothing (what it sent is still buffered), so another backend may serve it.
  if (&where == &backend_ && replayable_ && received_from_backend_ == 0 && !down_.eof)
    return attempt_failed(system_error_code(error) == std::errc::connection_reset ||
                                  system_error_code(error) == std::errc::broken_pipe
                              ? make_error_code(errc::backend_reset)
                              : system_error_code(error));
  worker_.owner().log(log_level::debug, "%s side of %s failed: %s", &where == &backend_ ? "backend" : "client",
                      peer_.to_endpoint().to_string().c_str(), system_error_code(error).message().c_str());
  close(true);
}

inline void session::unavailable(std::error_code why) {
  server::impl& srv = worker_.owner();
  worker_.stats.unavailable.fetch_add(1, std::memory_order_relaxed);
  if (holds_slot_) {
    holds_slot_ = false;
    srv.give_slot(worker_);
  }
  farewell_ = srv.options.unavailable;
  if (srv.options.on_unavailable) {
    rejected_connection client;
    rejected_access::set_peer(client, peer_.to_endpoint().to_string());
    srv.options.on_unavailable(why, client);
    farewell_ = std::move(rejected_access::reply(client));
  }
  srv.log(log_level::info, "unavailable for %s: %s", peer_.to_endpoint().to_string().c_str(),
          why.message().c_str());
  phase_ = phase::farewell;
  farewell_sent_ = 0;
  client_.writable = true;
  register_side(client_, io_read | io_write);
  reactor& loop = worker_.loop();
  loop.schedule(clock_, loop.now() + std::max<std::int64_t>(1000, worker_.options().connect_timeout.count()));
  farewell_pump();
}

// Sends the unavailable text, then a FIN, then reads until the client's FIN, so
// that unread client bytes never turn the close into a reset that eats the text.
inline void session::farewell_pump() {
  while (farewell_sent_ < farewell_.size()) {
    if (!client_.writable) return update_interest();
    auto n = send_some(client_.fd, farewell_.data() + farewell_sent_, farewell_.size() - farewell_sent_);
    if (n < 0) {
      int e = last_socket_error();
      if (would_block(e)) {
        client_.writable = false;
#if defined(HARMONY_USE_IOCP)
        worker_.loop().send(client_.fd, &client_, farewell_.data() + farewell_sent_, farewell_.size() - farewell_sent_);
#endif
        if (reactor::tracks_interest) worker_.loop().interest(client_.fd, &client_, io_read | io_write);
        return;
      }
      if (e == EINTR) continue;
      return close(true);
    }
    farewell_sent_ += static_cast<std::size_t>(n);
  }
  if (!down_.shut) {
    ::shutdown(client_.fd, SHUT_WR);
    down_.shut = true;
    if (reactor::tracks_interest) worker_.loop().interest(client_.fd, &client_, io_read);
  }
  char sink[4096];
  for (;;) {
    auto n = recv_some(client_.fd, sink, sizeof sink);
    if (n > 0) continue;
    if (n < 0 && would_block(last_socket_error())) return;
    if (n < 0 && last_socket_error() == EINTR) continue;
    return close(false);
  }
}

inline void session::release_buffers() {
  for (direction* d : {&up_, &down_}) {
    if (d->data) {
      worker_.pool().give(d->data, d->large);
      d->data = nullptr;
    }
#if defined(__linux__)
    worker_.pipes().give(d->pipe, d->piped == 0);
    d->piped = 0;
#endif
  }
}

inline void session::close(bool reset) {
  reactor& loop = worker_.loop();
  server::impl& srv = worker_.owner();
  loop.cancel(clock_);
  if (phase_ == phase::queued) worker_.dequeue(this);
  for (side* s : {&client_, &backend_}) {
    if (s->fd == invalid_socket) continue;
    if (s->registered) loop.remove(s->fd);
    if (reset) abort_socket(s->fd);
    else close_socket(s->fd);
    s->fd = invalid_socket;
  }
#if !defined(HARMONY_USE_IOCP)
  release_buffers();
#endif
  if (current_.valid()) srv.backends.lock()->release(current_, false);
  current_ = lease{};
  worker_.stats.bytes_in.fetch_add(sent_to_backend_, std::memory_order_relaxed);
  worker_.stats.bytes_out.fetch_add(received_from_backend_, std::memory_order_relaxed);
  worker_.stats.bytes_spliced.fetch_add(spliced_, std::memory_order_relaxed);
  worker_.stats.active.fetch_sub(1, std::memory_order_relaxed);
  phase_ = phase::idle;
  bool had_slot = holds_slot_;
  holds_slot_ = false;
  backend_.retired = true;
#if defined(HARMONY_USE_IOCP)
  // A cancelled send may read its buffer until its completion is back.
  loop.retire(&client_, [this] {
    release_buffers();
    worker_.recycle(this);
  });
#else
  loop.retire(&client_, [this] { worker_.recycle(this); });
#endif
  if (had_slot) srv.give_slot(worker_);
}

inline worker::~worker() {
  for (auto& s : sessions_)
    if (s->current_phase() != session::phase::idle) s->close(true);
  listener_.close();
#if defined(HARMONY_USE_IOCP)
  // The sessions and the accept operations are memory the kernel may still write.
  loop_.settle();
#endif
}

inline session* worker::make_session() {
  if (!free_sessions_.empty()) {
    session* s = free_sessions_.back();
    free_sessions_.pop_back();
    return s;
  }
  sessions_.push_back(std::make_unique<session>(*this));
  return sessions_.back().get();
}

inline void worker::recycle(session* s) { free_sessions_.push_back(s); }

#if defined(HARMONY_USE_IOCP)
// One listener serves every worker of the server; connections are dealt in turn.
inline void worker::deal(socket_handle fd, const address& peer) {
  auto& all = owner_.workers;
  worker* target = all.size() > 1 ? all[next_worker_++ % all.size()].get() : this;
  if (target == this) return adopt(fd, peer);
  target->loop().post([target, fd, peer] { target->adopt(fd, peer); });
}
#endif

inline void worker::adopt(socket_handle fd, const address& peer) {
  stats.accepted.fetch_add(1, std::memory_order_relaxed);
  stats.active.fetch_add(1, std::memory_order_relaxed);
  session* s = make_session();
  s->open(fd, peer);
  s->admit();
}

inline void worker::enqueue(session* s) {
  s->queue_next = nullptr;
  s->queue_prev = queue_tail_;
  if (queue_tail_) queue_tail_->queue_next = s;
  else queue_head_ = s;
  queue_tail_ = s;
  ++queue_length_;
  owner_.waiting.fetch_add(1, std::memory_order_relaxed);
}

inline void worker::dequeue(session* s) {
  if (s->queue_prev) s->queue_prev->queue_next = s->queue_next;
  else queue_head_ = s->queue_next;
  if (s->queue_next) s->queue_next->queue_prev = s->queue_prev;
  else queue_tail_ = s->queue_prev;
  s->queue_next = s->queue_prev = nullptr;
  --queue_length_;
  owner_.waiting.fetch_sub(1, std::memory_order_relaxed);
}

inline void worker::admit_waiting() {
  while (queue_head_ && owner_.try_take_slot()) {
    session* s = queue_head_;
    dequeue(s);
    s->leave_queue_for_attempt();
  }
}

}  // namespace detail
}  // namespace harmony
