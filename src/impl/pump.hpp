namespace harmony {

struct rejected_access {
  static void set_peer(rejected_connection& c, std::string peer) { c.peer_ = std::move(peer); }
  static std::string& reply(rejected_connection& c) { return c.reply_; }
};

namespace detail {

class worker;

// >>pump  the proxy core: two sockets, both directions, backpressure, half-close
// A proxied connection: the client socket, the backend socket and one buffer per
// direction. A direction reads its source only when its buffer is empty, so a
// slow reader holds back its writer (backpressure); it passes EOF on as a FIN only
// once everything read has been written (half-close); an error on either socket
// resets the other (reset propagation). Buffers come from the pool only while
// data is in flight, so an idle connection costs no buffer at all.
class session {
 public:
  enum class phase { idle, queued, connecting, retrying, relaying, farewell };

  struct side final : io_handler {
    session* owner = nullptr;
    socket_handle fd = invalid_socket;
    bool readable = false;
    bool writable = false;
    bool peer_closed = false;  // the peer's FIN has arrived: no byte will follow what is queued
    bool failed = false;       // an error is pending on the socket
    bool registered = false;
    void on_io(unsigned events) override { owner->on_side_io(*this, events); }
    void reset() noexcept {
      fd = invalid_socket;
      readable = writable = peer_closed = failed = registered = false;
      retired = false;
#if defined(HARMONY_USE_IOCP)
      iocp.interest = 0;
      iocp.error = 0;
      iocp.sent = 0;
#endif
    }
  };
  struct direction {
    char* data = nullptr;
    std::uint32_t begin = 0;
    std::uint32_t end = 0;
    bool large = false;  // data is a large buffer
    bool bulk = false;   // the next buffer taken is large
    bool eof = false;   // the source sent its FIN
    bool shut = false;  // the FIN went on to the destination
#if defined(__linux__)
    kernel_pipe pipe;         // borrowed while a streaming direction has bytes in the kernel
    std::uint32_t piped = 0;  // bytes in the pipe, read and not yet written
#endif
    bool holds_bytes() const noexcept {
#if defined(__linux__)
      if (piped) return true;
#endif
      return begin < end;
    }
  };

  explicit session(worker& w) : worker_(w) {
    client_.owner = this;
    backend_.owner = this;
#if defined(HARMONY_USE_IOCP)
    backend_.iocp.group = &client_;  // the session is released when both sockets' operations are back
#endif
    clock_.fire = [this] { on_clock(); };
  }
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  void open(socket_handle fd, const address& peer);
  void admit();
  void start_attempt();
  void on_clock();
  void on_side_io(side& s, unsigned events);
  // Ends the connection now: used by shutdown of the whole server, too.
  void close(bool reset);
  void leave_queue_for_attempt();

  phase current_phase() const noexcept { return phase_; }
  session* queue_next = nullptr;
  session* queue_prev = nullptr;
  std::int64_t queued_at = 0;

 private:
  void connected();
  bool read_ahead();
  bool send_while_connecting();
  void attempt_failed(std::error_code why);
  void unavailable(std::error_code why);
  void pump();
  bool flow(direction& d, side& src, side& dst);
  void fail(side& where, int error);
  void farewell_pump();
  void register_side(side& s, unsigned interest);
  void update_interest();
  void release_buffers();
  void took_in(const side& src, std::size_t n);
  void put_out(const side& dst, std::size_t n);
  enum class next_step { wait, call_again, failed };
  next_step after_call_error(side& s, bool& ready, int error);

  worker& worker_;
  side client_;
  side backend_;
  direction up_;    // client to backend
  direction down_;  // backend to client
  phase phase_ = phase::idle;
  lease current_;
  std::vector<lease> tried_;
  int attempts_ = 0;
  bool holds_slot_ = false;
  address peer_;
  timer clock_;
  std::int64_t last_activity_ = 0;
  std::uint64_t sent_to_backend_ = 0;
  std::uint64_t received_from_backend_ = 0;
  std::uint64_t spliced_ = 0;
  bool replayable_ = true;  // everything sent to the backend is still in up_
  std::string farewell_;
  std::size_t farewell_sent_ = 0;
};

}  // namespace detail
}  // namespace harmony
