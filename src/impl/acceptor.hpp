namespace harmony {
namespace detail {

// >>acceptor  listening sockets on either engine family
// A listening socket on a loop, and what it hands over: each accepted socket,
// ready for use, goes to `on_accept`. The two engines take connections their own way.
class acceptor_base : public io_handler {
 public:
  std::function<void(socket_handle, const address&)> on_accept;
  acceptor_base(const acceptor_base&) = delete;
  acceptor_base& operator=(const acceptor_base&) = delete;
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
};

#if defined(HARMONY_USE_IOCP)
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

 private:
  static constexpr int in_flight = 8;

  void on_io(unsigned) override {}
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
      set_nodelay(s);
      if (on_accept) on_accept(s, peer);
      else close_socket(s);
    }
    start();
  }
  void start() {
    for (int i = 0; i < in_flight && fd_ != invalid_socket; ++i) {
      accept_op& op = ops_[i];
      if (op.accepted != invalid_socket) continue;  // in flight
      if (std::error_code e = loop_.accept(fd_, this, op, family_)) {
        // Out of sockets or memory: try again in a moment instead of spinning.
        log_(log_level::error, "accept failed: %s", e.message().c_str());
        loop_.schedule(retry_, loop_.now() + 100);
        return;
      }
    }
  }

  std::unique_ptr<accept_op[]> ops_;
  int family_ = AF_INET;
};
#else
// A listening socket on a readiness loop: each readiness accepts every pending
// connection and hands it to `on_accept` (non-blocking, no Nagle). Out of
// descriptors or memory it pauses for 100 ms: a level-triggered poller would
// otherwise spin on the connection it cannot take.
class acceptor final : public acceptor_base {
 public:
  acceptor(reactor& loop, const logger& log) : acceptor_base(loop, log) {
    retry_.fire = [this] {
      if (reactor::tracks_interest) loop_.interest(fd_, this, io_read);
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
        if (reactor::tracks_interest) loop_.interest(fd_, this, 0);
        loop_.schedule(retry_, loop_.now() + 100);
        return;
      }
      if (on_accept) on_accept(s, peer);
      else close_socket(s);
    }
  }
};
#endif

}  // namespace detail
}  // namespace harmony
