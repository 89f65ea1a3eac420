namespace harmony {
namespace detail {

// >>worker  one event loop: accept, pick, connect, relay, farewell
// One event loop and everything on it: the listener, the sessions, the wait queue.
class worker {
 public:
  worker(server::impl& owner, const server_options& options, const logger& log)
      : owner_(owner), options_(options), log_(log), pool_(options.buffer_bytes, options.bulk_buffer_bytes) {
#if defined(HARMONY_USE_IOCP)
    listener_.on_accept = [this](socket_handle fd, const address& peer) { deal(fd, peer); };
#else
    listener_.on_accept = [this](socket_handle fd, const address& peer) { adopt(fd, peer); };
#endif
    // Give the memory of a finished burst back to the system, a moment later
    // and at most four times a second, so that a quiet balancer shrinks again.
    trim_.fire = [this] {
      pool_.take_released();
#if defined(__GLIBC__)
      ::malloc_trim(0);
#endif
    };
    pool_.on_surplus = [this] {
      if (!trim_.armed()) loop_.schedule(trim_, loop_.now() + 250);
    };
  }
  ~worker();
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  std::error_code open(socket_handle listener) {
    if (auto e = loop_.open()) return e;
#if defined(HARMONY_USE_IOCP)
    if (listener == invalid_socket) return {};  // a further worker: the first one accepts for it
#endif
    return listener_.open(listener);
  }

  reactor& loop() noexcept { return loop_; }
  buffer_pool& pool() noexcept { return pool_; }
#if defined(__linux__)
  pipe_pool& pipes() noexcept { return pipes_; }
  // Asked on the loop's own thread, the first time a direction streams.
  bool may_splice() noexcept {
    if (splice_allowed_ < 0) splice_allowed_ = options_.splice && sigpipe_harmless_on_this_thread();
    return splice_allowed_ == 1;
  }
#endif
  const server_options& options() const noexcept { return options_; }
  const logger& log() const noexcept { return log_; }
  server::impl& owner() noexcept { return owner_; }

  // The body of a thread the server starts for this loop.
  void run_own_thread() {
#if !defined(_WIN32)
    block_sigpipe_on_this_thread();
#endif
    loop_.run();
  }

  void enqueue(session* s);
  void dequeue(session* s);
  // Admits waiting connections while the concurrency limit allows, oldest first.
  void admit_waiting();
  std::size_t waiting() const noexcept { return queue_length_; }
  void recycle(session* s);

  struct counters {
    std::atomic<std::uint64_t> accepted{0}, active{0}, unavailable{0}, connect_failures{0}, bytes_in{0},
        bytes_out{0}, bytes_spliced{0};
  } stats;

 private:
  // Takes an accepted client connection into this loop.
  void adopt(socket_handle fd, const address& peer);
#if defined(HARMONY_USE_IOCP)
  // Windows has no SO_REUSEPORT: the first worker accepts for all of them.
  void deal(socket_handle fd, const address& peer);
  std::size_t next_worker_ = 0;
#endif
  session* make_session();

  server::impl& owner_;
  const server_options& options_;
  const logger& log_;
  reactor loop_;
  buffer_pool pool_;
#if defined(__linux__)
  pipe_pool pipes_;
  int splice_allowed_ = -1;  // not yet asked
#endif
  acceptor listener_{loop_, log_};
  timer trim_;
  std::vector<std::unique_ptr<session>> sessions_;
  std::vector<session*> free_sessions_;
  session* queue_head_ = nullptr;
  session* queue_tail_ = nullptr;
  std::size_t queue_length_ = 0;
};

}  // namespace detail
}  // namespace harmony
