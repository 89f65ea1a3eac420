namespace harmony {
namespace detail {

// >>acceptor  what the engines' acceptors share
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

}  // namespace detail
}  // namespace harmony
