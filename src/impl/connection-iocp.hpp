#if defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>iocp  the connection and the acceptor of the completion engine (Windows)
// Reads are readiness here too: while the owner wants to read, one zero-byte
// WSARecv waits in the port and its completion makes the connection readable;
// the bytes are then read with plain non-blocking recv. Writes are completions:
// what a plain send does not take at once goes out as an overlapped WSASend of
// the owner's bytes, and its completion tells the owner. Connects are ConnectEx.
// The kernel owns an operation until its completion is dequeued, so a closed
// connection is released only when all of its group's operations are back.
class connection final : public connection_core<connection> {
 public:
  explicit connection(reactor& loop) : connection_core(loop) {}
  ~connection() { close(false); }

  // Counts this connection's operations with `leader`'s, whose release waits for both.
  void share_release_with(connection& leader) noexcept { iocp.group = &leader; }

  // ConnectEx takes no part of the early bytes here: they go once it completes.
  // Even a connect that fails at once comes back as a completion (pending).
  io_status connect(const address& to, const char*, std::size_t, std::size_t& sent, std::error_code& error) {
    sent = 0;
    socket_handle s = invalid_socket;
    bool done = false;
    if ((error = begin_connect(to, s, done))) return io_status::failed;
    start(s);
    connecting_ = true;
    if ((error = loop_.add(fd_, this, 0))) {
      abandon(error);
      return io_status::failed;
    }
    loop_.engine().connect(fd_, this, to);
    return io_status::pending;
  }

  read_result read(char* into, std::size_t n, std::error_code& error) {
    // A failed probe carries the socket's error, which plain calls might never report again.
    if (probe_error_) {
      error = system_error_code(probe_error_);
      probe_error_ = 0;
      return -1;
    }
    return receive(into, n, error);
  }

  void on_complete(io_op& op, int error, std::uint32_t bytes) override {
    switch (op.kind) {
      case op_probe:
        if (error) probe_error_ = error;
        readable_ = true;
        if (want_read_) owner_->on_readable(*this);
        return;
      case op_connect:
        connecting_ = false;
        if (!error) update_interest();
        return owner_->on_connected(*this, error ? system_error_code(error) : std::error_code{});
      case op_send:
        if (!error && bytes == 0) error = WSAECONNRESET;  // a send that moved nothing cannot go on
        if (error) return wrote(system_error_code(error));
        out_ += bytes;
        out_left_ -= std::min<std::uint32_t>(bytes, out_left_);
        out_done_ += bytes;
        if (out_left_ > 0) return loop_.engine().send(fd_, this, out_, out_left_);  // completed short: the rest
        return wrote({});
      default: return;
    }
  }

 private:
  friend class connection_core<connection>;

  void start(socket_handle s) {
    connection_core::start(s);
    probe_error_ = 0;
  }
  unsigned interest_now() const noexcept { return want_read_ && !connecting_ ? io_read : 0u; }
  void update_interest() {
    if (fd_ != invalid_socket) loop_.interest(fd_, this, interest_now());
  }
  void short_read() noexcept { readable_ = false; }  // the next probe says when there is more
  io_status write_later(const char* rest, std::size_t n) {
    keep_rest(rest, n);
    loop_.engine().send(fd_, this, out_, out_left_);
    return io_status::pending;
  }
  void forget_writes() noexcept {}

  int probe_error_ = 0;
};

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
    for (const held& h : held_) close_socket(h.s);
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

  // Accepts again after admit() said no; on the loop's thread.
  void resume() {
    if (!paused_) return;
    paused_ = false;
    while (!held_.empty()) {
      if (admit && !admit()) {
        paused_ = true;
        return;
      }
      held h = held_.front();
      held_.erase(held_.begin());
      hand_over(h.s, h.peer);
    }
    if (!retry_.armed()) start();
  }

 private:
  static constexpr int in_flight = 8;
  // Accepts posted before admit() said no complete all the same: those are held here,
  // taken in but not served, as a readiness listener leaves them in the backlog.
  struct held {
    socket_handle s;
    address peer;
  };
  std::vector<held> held_;

  void hand_over(socket_handle s, const address& peer) {
    if (on_accept) on_accept(s, peer);
    else close_socket(s);
  }

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
      fed();
      set_nodelay(s);
      if (admit && !admit()) {
        held_.push_back(held{s, peer});
        paused_ = true;
        return;
      }
      hand_over(s, peer);
    }
    start();
  }
  // Posts the accepts that are not in flight, while admit() allows (those in flight
  // may still complete beyond it).
  void start() {
    if (paused_ || retry_.armed()) return;
    for (int i = 0; i < in_flight && fd_ != invalid_socket; ++i) {
      accept_op& op = ops_[i];
      if (op.accepted != invalid_socket) continue;  // in flight
      if (admit && !admit()) {
        paused_ = true;
        return;
      }
      // Out of sockets or memory: try again in a moment instead of spinning.
      if (std::error_code e = loop_.engine().accept(fd_, this, op, family_)) return starving(e);
    }
  }

  std::unique_ptr<accept_op[]> ops_;
  int family_ = AF_INET;
};

}  // namespace detail
}  // namespace harmony
#endif  // HARMONY_USE_IOCP
