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
