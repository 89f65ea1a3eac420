namespace harmony {
namespace detail {

// >>connection-core  what the connections of both engine families share
// The state every connection keeps and the calls that are the same on every
// engine: taking a socket, reading with recv, writing with send until the socket
// is full, the FIN after the last write, closing. Where the engines differ (what
// a short read means, how the rest of a write goes out, what to watch) the
// engine's connection (>>readiness, >>iocp) says so through a few hooks:
//   interest_now(), update_interest()  what the poller must watch now
//   short_read()                       a read returned less than asked
//   write_later(rest, n)               the socket took only part of a write
//   forget_writes()                    engine state of a pending write, on close
template <class Engine>
class connection_core : public io_handler {
 public:
  connection_core(const connection_core&) = delete;
  connection_core& operator=(const connection_core&) = delete;

  void set_owner(connection_owner* owner) noexcept { owner_ = owner; }
  bool is_open() const noexcept { return fd_ != invalid_socket; }
  socket_handle handle() const noexcept { return fd_; }
  bool connecting() const noexcept { return connecting_; }
  // Whether a read may find something (or the end, or an error) now.
  bool readable() const noexcept { return readable_; }
  // A write still going on: the rest of the last write() that returned pending.
  bool writing() const noexcept { return out_left_ > 0; }
  // Bytes handed to the system and not yet delivered (sent and acknowledged),
  // where the system tells; 0 where it does not.
  std::size_t unsent() const noexcept { return fd_ == invalid_socket ? 0 : unsent_bytes(fd_); }

  // Takes an accepted (or otherwise connected) socket; on failure it is closed.
  std::error_code adopt(socket_handle s) {
    self().start(s);
    if (std::error_code e = loop_.add(fd_, this, self().interest_now())) return abandon(e);
    return {};
  }

  // Whether the owner is told when the connection becomes readable.
  void want_read(bool on) {
    if (want_read_ == on) return;
    want_read_ = on;
    self().update_interest();
  }

  // Writes [data, data + n). `done`: all written now. `pending`: `written` went
  // now and the rest goes when the socket takes it; the bytes must stay where
  // they are until on_written. `failed`: `error` says why.
  io_status write(const char* data, std::size_t n, std::size_t& written, std::error_code& error) {
    written = 0;
    if (n > max_write) {  // what one write may hold (its rest is kept in 32 bits)
      error = std::make_error_code(std::errc::message_size);
      return io_status::failed;
    }
    while (written < n) {
      auto r = send_some(fd_, data + written, n - written);
      if (r >= 0) {
        written += static_cast<std::size_t>(r);
        // A short send means the socket is full: waiting beats another call.
        if (written < n) return self().write_later(data + written, n - written);
        continue;
      }
      int e = last_socket_error();
      if (would_block(e)) return self().write_later(data + written, n - written);
      if (e == EINTR) continue;
      error = system_error_code(e);
      return io_status::failed;
    }
    return io_status::done;
  }

  // Sends a FIN once every write has gone out.
  void shutdown_send() {
    if (fd_ == invalid_socket) return;
    if (writing()) {
      shutdown_pending_ = true;
      return;
    }
    ::shutdown(fd_, SHUT_WR);
  }

  // Closes now (cancelling what is in flight); with `reset`, the peer gets a reset
  // instead of a FIN. Nothing is reported after it; the owner is released
  // through reactor::retire.
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
    self().forget_writes();
  }

 protected:
  explicit connection_core(reactor& loop) : loop_(loop) {}
  ~connection_core() = default;  // the engine's connection closes: its hooks are gone by now

  Engine& self() noexcept { return static_cast<Engine&>(*this); }

  // Engines that keep more state extend this (and call it first).
  void start(socket_handle s) {
    fd_ = s;
    retired = false;
    readable_ = at_end_ = connecting_ = want_read_ = shutdown_pending_ = peer_closed_ = failed_ = false;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    out_pipe_ = -1;
  }
  static constexpr std::size_t max_write = 0xffffffffu;
  std::error_code abandon(std::error_code e) {
    close_socket(fd_);
    fd_ = invalid_socket;
    connecting_ = false;
    return e;
  }

  // recv into [into, into + n): bytes, the end (0), nothing for now or a failure (-1).
  read_result receive(char* into, std::size_t n, std::error_code& error) {
    if (at_end_) return 0;
    for (;;) {
      auto r = recv_some(fd_, into, n);
      if (r > 0) {
        if (static_cast<std::size_t>(r) < n) self().short_read();
        return r;
      }
      if (int k = read_returned(r, r == 0 ? 0 : last_socket_error(), error); k <= 0) return k;
    }
  }

  // What a read call that moved nothing (`r` <= 0, `e` its error) means: the end
  // (0), nothing for now or a failure (-1), or call again after a signal (1).
  int read_returned(std::ptrdiff_t r, int e, std::error_code& error) noexcept {
    if (r == 0) {
      at_end_ = true;
      return 0;
    }
    if (would_block(e)) {
      readable_ = false;
      return -1;
    }
    if (e == EINTR) return 1;
    error = system_error_code(e);
    return -1;
  }

  // The rest of a write is to go out later, from `rest`.
  void keep_rest(const char* rest, std::size_t n) noexcept {
    out_ = rest;
    out_left_ = static_cast<std::uint32_t>(n);  // n <= max_write
    out_done_ = 0;
  }
  // The pending write has ended; the FIN asked for meanwhile goes now.
  void wrote(std::error_code e) {
    std::size_t n = out_done_;
    out_ = nullptr;
    out_left_ = out_done_ = 0;
    self().forget_writes();
    self().update_interest();
    if (!e && shutdown_pending_ && fd_ != invalid_socket) {
      shutdown_pending_ = false;
      ::shutdown(fd_, SHUT_WR);
    }
    owner_->on_written(self(), n, e);
  }

  // Every proxied connection holds two of these, so they are kept small: the
  // flags first (they fill the room the handler's own flag leaves), then the
  // counts, then the pointers.
  bool readable_ = false;
  bool at_end_ = false;  // the end of the stream was read (or is known to be next)
  bool connecting_ = false;
  bool want_read_ = false;
  bool shutdown_pending_ = false;
  bool peer_closed_ = false;  // readiness: the peer's FIN has arrived, no byte follows what is queued
  bool failed_ = false;       // readiness: an error is pending on the socket
  socket_handle fd_ = invalid_socket;
  std::uint32_t out_left_ = 0;  // the rest of a pending write...
  std::uint32_t out_done_ = 0;  // ... and what of it was written since write() returned
  int out_pipe_ = -1;           // readiness on Linux: the pipe a pending write comes from (splice)
  const char* out_ = nullptr;
  reactor& loop_;
  connection_owner* owner_ = nullptr;
};

}  // namespace detail
}  // namespace harmony
