namespace harmony {
namespace detail {

// >>acceptor  what the engines' acceptors share
// A listening socket on a loop, and what it hands over: each accepted socket,
// ready for use, goes to `on_accept`. The two engines take connections their own way.
class acceptor_base : public io_handler {
 public:
  std::function<void(socket_handle, const address&)> on_accept;
  // Asked before each accept: false pauses accepting (the connections wait in the
  // kernel's backlog) until resume(). Empty: always accept.
  std::function<bool()> admit;
  acceptor_base(const acceptor_base&) = delete;
  acceptor_base& operator=(const acceptor_base&) = delete;
  socket_handle socket() const noexcept { return fd_; }  // invalid_socket once closed
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
  bool paused_ = false;   // admit() said no: waiting for resume()
  bool starved_ = false;  // an accept failed for want of descriptors or memory

  // Out of descriptors (EMFILE, ENFILE) or memory: accepting pauses for a moment and
  // is tried again, as nginx and HAProxy do, rather than spinning on the connection it
  // cannot take. Logged once per episode, and once when it recovers.
  void starving(std::error_code e) {
    if (!starved_)
      log_(log_level::error, "accept failed: %s: pausing accepts, trying again every %d ms", e.message().c_str(),
           static_cast<int>(starved_retry_ms));
    starved_ = true;
    loop_.schedule(retry_, loop_.now() + starved_retry_ms);
  }
  void fed() {
    if (!starved_) return;
    starved_ = false;
    log_(log_level::warn, "accepting again");
  }
  static constexpr std::int64_t starved_retry_ms = 100;
};

}  // namespace detail
}  // namespace harmony
