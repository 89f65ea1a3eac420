#if !defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>readiness  the connection and the acceptor of the readiness engines (epoll, poll)
// Reads wait for readiness and then read without blocking; a write goes out at
// once as far as the socket takes it, and the rest waits for writability inside
// the connection, which tells the owner when all of it is out. With epoll every
// socket is registered once for everything (edge-triggered) and the connection
// remembers what it was told; with poll it states what it waits for.
class connection final : public io_handler {
 public:
  explicit connection(reactor& loop) : loop_(loop) {}
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { close(false); }

  void set_owner(connection_owner* owner) noexcept { owner_ = owner; }
  // The completion engine releases connections in groups; readiness needs none.
  void share_release_with(connection&) noexcept {}

  bool is_open() const noexcept { return fd_ != invalid_socket; }
  bool connecting() const noexcept { return connecting_; }

  // Takes an accepted (or otherwise connected) socket; on failure it is closed.
  std::error_code adopt(socket_handle s) {
    start(s);
    if (std::error_code e = loop_.add(fd_, this, interest_now())) return abandon(e);
    return {};
  }

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

  // Whether a read may find something (or the end, or an error) now.
  bool readable() const noexcept { return readable_; }
  // Whether the owner is told when the connection becomes readable.
  void want_read(bool on) {
    if (want_read_ == on) return;
    want_read_ = on;
    update_interest();
  }

  read_result read(char* into, std::size_t n, std::error_code& error) {
    if (at_end_) return 0;
    for (;;) {
      auto r = recv_some(fd_, into, n);
      if (r > 0) {
        // With edge-triggered readiness a short read means "drained". If the
        // peer's FIN had already arrived, nothing can follow: the next read is
        // the end of the stream, without a system call. A pending error (a reset
        // behind the data) raises no further event, so it stays readable until
        // a read reports it.
        if (static_cast<std::size_t>(r) < n && !failed_) {
          if (peer_closed_) at_end_ = true;
          else readable_ = false;
        }
        return r;
      }
      if (r == 0) {
        at_end_ = true;
        return 0;
      }
      int e = last_socket_error();
      if (would_block(e)) {
        readable_ = false;
        return -1;
      }
      if (e == EINTR) continue;
      error = system_error_code(e);
      return -1;
    }
  }

  // A write still going on: the bytes of the last write() that returned pending.
  bool writing() const noexcept { return out_left_ > 0; }

  // Writes [data, data + n). `done`: all written now. `pending`: `written` went
  // now and the rest goes when the socket takes it; the bytes must stay where
  // they are until on_written. `failed`: `error` says why.
  io_status write(const char* data, std::size_t n, std::size_t& written, std::error_code& error) {
    written = 0;
    while (written < n) {
      auto r = send_some(fd_, data + written, n - written);
      if (r >= 0) {
        written += static_cast<std::size_t>(r);
        // A short send means the socket is full: waiting beats another call.
        if (written < n) return wait_to_write(data + written, n - written);
        continue;
      }
      int e = last_socket_error();
      if (would_block(e)) return wait_to_write(data + written, n - written);
      if (e == EINTR) continue;
      error = system_error_code(e);
      return io_status::failed;
    }
    return io_status::done;
  }

#if defined(__linux__)
  // splice(2) into a pipe: bytes (> 0), the end (0), nothing for now or a failure
  // (-1). A short splice does not prove the socket drained (the pipe may run out
  // of slots first), so the connection stays readable until a splice finds nothing.
  read_result read_into(kernel_pipe& pipe, std::error_code& error) {
    if (at_end_) return 0;
    for (;;) {
      ssize_t r = ::splice(fd_, nullptr, pipe.write, nullptr, pipe.capacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) return r;
      if (r == 0) {
        at_end_ = true;
        return 0;
      }
      int e = errno;
      if (would_block(e)) {
        readable_ = false;
        return -1;
      }
      if (e == EINTR) continue;
      error = system_error_code(e);
      return -1;
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
        out_pipe_ = &pipe;
        out_left_ = n - written;
        out_done_ = 0;
        update_interest();
        return io_status::pending;
      }
      if (e == EINTR) continue;
      error = system_error_code(e);
      return io_status::failed;
    }
    return io_status::done;
  }
#endif

  // Sends a FIN once every write has gone out.
  void shutdown_send() {
    if (fd_ == invalid_socket) return;
    if (writing()) {
      shutdown_pending_ = true;
      return;
    }
    ::shutdown(fd_, SHUT_WR);
  }

  // Closes now; with `reset`, the peer gets a reset instead of a FIN. Nothing is
  // reported after it; the owner is released through reactor::retire.
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
    out_pipe_ = nullptr;
  }

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
  void start(socket_handle s) {
    fd_ = s;
    retired = false;
    readable_ = peer_closed_ = failed_ = at_end_ = false;
    connecting_ = want_read_ = shutdown_pending_ = false;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    out_pipe_ = nullptr;
  }
  std::error_code abandon(std::error_code e) {
    close_socket(fd_);
    fd_ = invalid_socket;
    connecting_ = false;
    return e;
  }
  unsigned interest_now() const noexcept {
    return (want_read_ && !connecting_ ? io_read : 0u) | (connecting_ || writing() ? io_write : 0u);
  }
  // Only a level-triggered poller needs to be told what changed.
  void update_interest() {
    if (!poller::edge_triggered && fd_ != invalid_socket) loop_.interest(fd_, this, interest_now());
  }
  io_status wait_to_write(const char* rest, std::size_t n) {
    out_ = rest;
    out_left_ = n;
    out_done_ = 0;
    update_interest();
    return io_status::pending;
  }
  void go_on_writing() {
    while (out_left_ > 0) {
      ssize_t r;
#if defined(__linux__)
      if (out_pipe_) r = ::splice(out_pipe_->read, nullptr, fd_, nullptr, out_left_, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      else
#endif
        r = send_some(fd_, out_, out_left_);
      if (r > 0) {
        if (!out_pipe_) out_ += r;
        out_left_ -= static_cast<std::size_t>(r);
        out_done_ += static_cast<std::size_t>(r);
        continue;
      }
      int e = r == 0 ? EPIPE : last_socket_error();
      if (would_block(e)) return;
      if (e == EINTR) continue;
      return wrote(system_error_code(e));
    }
    wrote({});
  }
  void wrote(std::error_code e) {
    std::size_t n = out_done_;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    out_pipe_ = nullptr;
    update_interest();
    if (!e && shutdown_pending_) {
      shutdown_pending_ = false;
      ::shutdown(fd_, SHUT_WR);
    }
    owner_->on_written(*this, n, e);
  }

  reactor& loop_;
  connection_owner* owner_ = nullptr;
  socket_handle fd_ = invalid_socket;
  bool readable_ = false;
  bool peer_closed_ = false;  // the peer's FIN has arrived: no byte follows what is queued
  bool failed_ = false;       // an error is pending on the socket
  bool at_end_ = false;       // the end of the stream was read (or is known to be next)
  bool connecting_ = false;
  bool want_read_ = false;
  bool shutdown_pending_ = false;
  const char* out_ = nullptr;   // the rest of a pending write
  std::size_t out_left_ = 0;
  std::size_t out_done_ = 0;    // of it, written since write() returned
  kernel_pipe* out_pipe_ = nullptr;  // the source of a pending write from a pipe (splice)
};

// A listening socket on a readiness loop: each readiness accepts every pending
// connection and hands it to `on_accept` (non-blocking, no Nagle). Out of
// descriptors or memory it pauses for 100 ms: a level-triggered poller would
// otherwise spin on the connection it cannot take.
class acceptor final : public acceptor_base {
 public:
  acceptor(reactor& loop, const logger& log) : acceptor_base(loop, log) {
    retry_.fire = [this] {
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

 private:
  void on_io(unsigned) override { accept_all(); }
  void accept_all() {
    while (fd_ != invalid_socket) {
      address peer;
      socket_handle s = accept_one(fd_, peer);
      if (s == invalid_socket) {
        int e = last_socket_error();
        if (would_block(e)) return;
        if (e == EINTR || e == ECONNABORTED) continue;
        log_(log_level::error, "accept failed: %s", system_error_code(e).message().c_str());
        loop_.interest(fd_, this, 0);
        loop_.schedule(retry_, loop_.now() + 100);
        return;
      }
      if (on_accept) on_accept(s, peer);
      else close_socket(s);
    }
  }
};

}  // namespace detail
}  // namespace harmony
#endif  // !HARMONY_USE_IOCP
