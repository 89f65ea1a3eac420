namespace harmony {
namespace detail {

// >>stream  a buffered byte stream for admin connections and the agent
// A buffered byte stream on one loop, for the admin port and the agent: read
// callbacks, queued writes, graceful or immediate close. Closing retires the
// handler; the owner is released after the loop turn, so a callback may close
// (and so release) its own stream.
class stream final : public io_handler {
 public:
  std::function<void(std::string_view)> on_data;
  std::function<void(std::error_code)> on_connect;  // outgoing streams: once, error or success
  std::function<void(std::error_code)> on_close;    // once: empty code on a clean EOF

  explicit stream(reactor& loop) : loop_(loop) {}
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() { drop(); }

  bool is_open() const noexcept { return fd_ != invalid_socket; }
  bool connecting() const noexcept { return connecting_; }
#if defined(HARMONY_USE_IOCP)
  std::size_t pending() const noexcept { return out_.size() - out_sent_ + flight_.size(); }
#else
  std::size_t pending() const noexcept { return out_.size() - out_sent_; }
#endif

  void attach(socket_handle fd) {
    reset_state();
    fd_ = fd;
    loop_.add(fd_, this, io_read);
  }

  std::error_code connect(const address& to) {
    reset_state();
    bool done = false;
    socket_handle s = invalid_socket;
    if (auto e = begin_connect(to, s, done)) return e;
    fd_ = s;
    connecting_ = !done;
#if defined(HARMONY_USE_IOCP)
    // Nothing to read before ConnectEx completes; its completion comes as io_write.
    loop_.add(fd_, this, 0);
    loop_.connect(fd_, this, to);
#else
    loop_.add(fd_, this, io_read | io_write);
#endif
    if (done && on_connect) on_connect({});
    return {};
  }

  void write(std::string_view bytes) {
    if (fd_ == invalid_socket || closing_) return;
    if (out_sent_ == out_.size()) {
      out_.clear();
      out_sent_ = 0;
    }
    out_.append(bytes.data(), bytes.size());
    if (!connecting_) flush();
  }

  // Sends what is queued and a FIN, then waits for the peer's FIN and closes.
  // on_close follows when that completes later, not when it completes at once.
  void finish() {
    if (fd_ == invalid_socket || closing_) return;
    closing_ = true;
    finishing_ = true;
    if (!connecting_) flush();
    if (draining_) read_all();
    finishing_ = false;
  }

  // Closes now, with a reset when `reset`. No callback follows.
  void close(bool reset = false) {
    if (fd_ == invalid_socket) return;
    loop_.remove(fd_);
    if (reset) abort_socket(fd_);
    else close_socket(fd_);
    fd_ = invalid_socket;
    connecting_ = false;
  }

  void on_io(unsigned events) override {
#if defined(HARMONY_USE_IOCP)
    if (!connecting_) {
      if (events & io_error) return hang_up(system_error_code(iocp.error));
      if (events & io_write) {
        // The overlapped send is done: what is left, and a pending finish(), go on.
        flight_.erase(0, iocp.sent);
        iocp.sent = 0;
        if (!flight_.empty()) {
          out_.insert(out_sent_, flight_);
          flight_.clear();
        }
        flush();
        if (fd_ == invalid_socket) return;
      }
    }
#endif
    if (connecting_) {
      if (!(events & (io_write | io_error))) return;
      connecting_ = false;
#if defined(HARMONY_USE_IOCP)
      std::error_code e = iocp.error ? system_error_code(iocp.error) : std::error_code{};
      if (!e) loop_.interest(fd_, this, io_read);
#else
      std::error_code e = pending_socket_error(fd_);
#endif
      if (e) {
        close();
        if (on_connect) on_connect(e);
        return;
      }
      if (on_connect) on_connect({});
      if (fd_ == invalid_socket) return;
      flush();
      if (fd_ == invalid_socket) return;
    }
    if ((events & io_write) && pending()) {
      flush();
      if (fd_ == invalid_socket) return;
    }
    if (events & io_read) read_all();
  }

 private:
  void reset_state() {
    close();
    out_.clear();
    out_sent_ = 0;
#if defined(HARMONY_USE_IOCP)
    flight_.clear();  // the old socket's send was cancelled; the buffer itself stays allocated
#endif
    closing_ = draining_ = false;
    retired = false;
  }
  void drop() { close(); }

  void read_all() {
    char buffer[4096];
    for (;;) {
      auto n = recv_some(fd_, buffer, sizeof buffer);
      if (n > 0) {
        if (draining_) continue;
        if (on_data) on_data(std::string_view(buffer, static_cast<std::size_t>(n)));
        if (fd_ == invalid_socket || retired) return;
        continue;
      }
      if (n < 0) {
        int e = last_socket_error();
        if (would_block(e)) return;
        if (e == EINTR) continue;
        return hang_up(system_error_code(e));
      }
      return hang_up({});
    }
  }

  void hang_up(std::error_code e) {
    close(static_cast<bool>(e));
    if (on_close && !finishing_) on_close(e);
  }

  void flush() {
#if defined(HARMONY_USE_IOCP)
    if (iocp.writing) return;  // bytes must not overtake the send in flight: its completion flushes
#endif
    while (out_sent_ < out_.size()) {
      auto n = send_some(fd_, out_.data() + out_sent_, out_.size() - out_sent_);
      if (n < 0) {
        int e = last_socket_error();
        if (would_block(e)) {
#if defined(HARMONY_USE_IOCP)
          // The rest goes out overlapped from a string of its own, since write() may
          // grow out_ (and move its bytes) before the send completes.
          flight_.assign(out_, out_sent_, std::string::npos);
          out_.clear();
          out_sent_ = 0;
          loop_.send(fd_, this, flight_.data(), flight_.size());
#endif
          if (reactor::tracks_interest) loop_.interest(fd_, this, io_read | io_write);
          return;
        }
        if (e == EINTR) continue;
        return hang_up(system_error_code(e));
      }
      out_sent_ += static_cast<std::size_t>(n);
    }
    out_.clear();
    out_sent_ = 0;
    if (reactor::tracks_interest) loop_.interest(fd_, this, io_read);
    if (closing_ && !draining_) {
      // FIN first, then read until the peer's FIN: closing with unread input
      // would send a reset that can destroy the replies still in flight.
      ::shutdown(fd_, SHUT_WR);
      draining_ = true;
      if (!finishing_) read_all();
    }
  }

  reactor& loop_;
  socket_handle fd_ = invalid_socket;
  bool connecting_ = false;
  bool closing_ = false;
  bool finishing_ = false;
  bool draining_ = false;
  std::string out_;
  std::size_t out_sent_ = 0;
#if defined(HARMONY_USE_IOCP)
  std::string flight_;  // bytes of the overlapped send in flight
#endif
};

}  // namespace detail
}  // namespace harmony
