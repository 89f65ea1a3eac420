namespace harmony {
namespace detail {

// >>reactor  timers, posting, the poller contract; epoll, poll and IOCP pollers
enum : unsigned { io_read = 1, io_write = 2, io_error = 4, io_peer_closed = 8 };

#if defined(HARMONY_USE_IOCP)
struct io_op;
#endif

struct io_handler {
  virtual void on_io(unsigned events) = 0;
  bool retired = false;  // closed during this loop turn: its pending events are stale
#if defined(HARMONY_USE_IOCP)
  // What the completion engine keeps per socket. The kernel writes into an
  // operation until its completion is dequeued, so a handler is released only
  // when every operation it started has come back; `group` is the handler that
  // counts them (the two sockets of a session count on one) and holds the release.
  struct iocp_state {
    io_handler* group = nullptr;  // null: this handler
    std::uint32_t outstanding = 0;
    unsigned interest = 0;
    socket_handle socket = invalid_socket;  // while registered
    io_op* reading = nullptr;               // the zero-byte receive in flight
    io_op* writing = nullptr;               // the send or connect in flight
    int error = 0;                          // of the completion being delivered
    std::uint32_t sent = 0;                 // bytes the completed send wrote
    std::function<void()> release;
  } iocp;
  io_handler* counting() noexcept { return iocp.group ? iocp.group : this; }
  // Turns a completion into the readiness events on_io() understands; a handler
  // that needs the operation itself (the listener) overrides it.
  virtual void on_complete(io_op& op, int error, std::uint32_t bytes);
#endif

 protected:
  ~io_handler() = default;
};

struct timer {
  std::int64_t deadline = 0;
  std::size_t index = static_cast<std::size_t>(-1);
  std::function<void()> fire;
  bool armed() const noexcept { return index != static_cast<std::size_t>(-1); }
};

#if defined(HARMONY_USE_EPOLL)
// Edge-triggered: each socket is registered once for everything, so changing what
// a connection waits for costs no system call. Handlers track readiness themselves.
class poller {
 public:
  static constexpr bool tracks_interest = false;
  std::error_code open() {
    fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    return fd_ < 0 ? system_error_code(errno) : std::error_code{};
  }
  ~poller() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned) {
    epoll_event e{};
    e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    e.data.ptr = h;
    return ::epoll_ctl(fd_, EPOLL_CTL_ADD, s, &e) == 0 ? std::error_code{} : system_error_code(errno);
  }
  void interest(socket_handle, io_handler*, unsigned) noexcept {}
  // Closing a socket removes it from the epoll set by itself.
  void remove(socket_handle) noexcept {}
  template <class Woke, class Dispatch>
  void wait(int timeout_ms, Woke&& woke, Dispatch&& dispatch) {
    int n = ::epoll_wait(fd_, events_, max_events, timeout_ms);
    woke();
    for (int i = 0; i < n; ++i) {
      unsigned ev = 0, e = events_[i].events;
      if (e & EPOLLIN) ev |= io_read;
      if (e & EPOLLOUT) ev |= io_write;
      if (e & EPOLLERR) ev |= io_error | io_read | io_write;
      if (e & (EPOLLRDHUP | EPOLLHUP)) ev |= io_peer_closed | io_read;
      if (e & EPOLLHUP) ev |= io_write;
      dispatch(static_cast<io_handler*>(events_[i].data.ptr), ev);
    }
  }

 private:
  static constexpr int max_events = 256;
  int fd_ = -1;
  epoll_event events_[max_events];
};
#elif defined(HARMONY_USE_POLL)
// Level-triggered poll(2): handlers state what they wait for.
class poller {
 public:
  static constexpr bool tracks_interest = true;
  std::error_code open() { return {}; }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) {
    if (static_cast<std::size_t>(s) >= slot_of_.size()) slot_of_.resize(static_cast<std::size_t>(s) + 1, -1);
    slot_of_[static_cast<std::size_t>(s)] = static_cast<int>(fds_.size());
    pollfd p{};
    p.fd = s;
    p.events = mask(interest);
    fds_.push_back(p);
    handlers_.push_back(h);
    return {};
  }
  void interest(socket_handle s, io_handler*, unsigned interest) noexcept {
    int slot = lookup(s);
    if (slot >= 0) fds_[static_cast<std::size_t>(slot)].events = mask(interest);
  }
  void remove(socket_handle s) noexcept {
    int slot = lookup(s);
    if (slot < 0) return;
    std::size_t i = static_cast<std::size_t>(slot), last = fds_.size() - 1;
    if (i != last) {
      fds_[i] = fds_[last];
      handlers_[i] = handlers_[last];
      slot_of_[static_cast<std::size_t>(fds_[i].fd)] = slot;
    }
    fds_.pop_back();
    handlers_.pop_back();
    slot_of_[static_cast<std::size_t>(s)] = -1;
  }
  template <class Woke, class Dispatch>
  void wait(int timeout_ms, Woke&& woke, Dispatch&& dispatch) {
    int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout_ms);
    woke();
    if (n <= 0) return;
    ready_.clear();
    for (std::size_t i = 0; i < fds_.size() && ready_.size() < static_cast<std::size_t>(n); ++i) {
      short r = fds_[i].revents;
      if (!r) continue;
      unsigned ev = 0;
      if (r & POLLIN) ev |= io_read;
      if (r & POLLOUT) ev |= io_write;
      if (r & (POLLERR | POLLNVAL)) ev |= io_error | io_read | io_write;
      if (r & POLLHUP) ev |= io_peer_closed | io_read | io_write;
      ready_.push_back({handlers_[i], ev});
    }
    for (auto& r : ready_) dispatch(r.first, r.second);
  }

 private:
  static short mask(unsigned interest) noexcept {
    return static_cast<short>(((interest & io_read) ? POLLIN : 0) | ((interest & io_write) ? POLLOUT : 0));
  }
  int lookup(socket_handle s) const noexcept {
    return static_cast<std::size_t>(s) < slot_of_.size() ? slot_of_[static_cast<std::size_t>(s)] : -1;
  }
  std::vector<pollfd> fds_;
  std::vector<io_handler*> handlers_;
  std::vector<int> slot_of_;
  std::vector<std::pair<io_handler*, unsigned>> ready_;
};
#elif defined(HARMONY_USE_IOCP)
// Windows: an I/O completion port. Readiness is emulated the libuv way: a socket
// that wants to read keeps one zero-byte overlapped WSARecv in flight, which
// completes when data (or a FIN, or a reset) arrives and costs no buffer while the
// connection is idle; the handler then reads with plain non-blocking recv, as on
// POSIX. Interest is level-triggered, like poll: after each delivery the probe is
// posted again while the handler still wants to read. A send that would block goes
// out as an overlapped WSASend of the caller's bytes, which stay put until its
// completion is delivered as io_write with `iocp.sent` set. Connects use ConnectEx
// and the listener AcceptEx, both found through WSAIoctl.
enum : unsigned { op_probe, op_send, op_connect, op_accept };

struct io_op {
  OVERLAPPED overlapped;  // first, so that a dequeued OVERLAPPED* is the operation
  io_handler* owner;
  socket_handle socket;
  unsigned kind;
  int failed;   // set when the call failed at once: a completion posted by hand carries it
  bool stale;   // its socket was closed: count it back, deliver nothing
  bool pooled;  // belongs to the engine's pool (the listener owns its accept operations)
  io_op* next;  // the pool's free list
};

// An AcceptEx in flight: the socket it fills and the room for both addresses.
struct accept_op : io_op {
  static constexpr DWORD address_room = sizeof(sockaddr_storage) + 16;
  socket_handle accepted = invalid_socket;
  char addresses[2 * address_room];
};

inline void io_handler::on_complete(io_op& op, int error, std::uint32_t bytes) {
  iocp.error = error;
  unsigned failed = error ? static_cast<unsigned>(io_error) : 0u;
  switch (op.kind) {
    case op_probe: return on_io(io_read | failed);
    case op_send: iocp.sent = bytes; return on_io(io_write | failed);
    default: return on_io(io_write | failed);
  }
}

class poller {
 public:
  static constexpr bool tracks_interest = true;
  poller() = default;
  poller(const poller&) = delete;
  poller& operator=(const poller&) = delete;
  ~poller() {
    if (port_) ::CloseHandle(port_);
    // An operation still in flight here (settle() gave up) may yet be written by
    // the kernel: its memory is left alone rather than freed under it.
    if (in_flight_ == 0)
      while (free_) {
        io_op* op = free_;
        free_ = op->next;
        delete op;
      }
  }
  std::error_code open() {
    if (!winsock_ready()) return system_error_code(WSANOTINITIALISED);
    port_ = ::CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 1);
    return port_ ? std::error_code{} : system_error_code(static_cast<int>(::GetLastError()));
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) {
    if (!::CreateIoCompletionPort(reinterpret_cast<HANDLE>(s), port_, 0, 0))
      return system_error_code(static_cast<int>(::GetLastError()));
    sockets_[s] = h;
    h->iocp.socket = s;
    h->iocp.interest = 0;
    this->interest(s, h, interest);
    return {};
  }
  void interest(socket_handle, io_handler* h, unsigned interest) {
    h->iocp.interest = interest;
    if ((interest & io_read) && !h->iocp.reading && h->iocp.socket != invalid_socket) probe(h);
  }
  // Cancels what the socket has in flight; the caller closes it next. (Wine
  // completes a receive cut short by closesocket with an odd status; after
  // CancelIoEx it reports the usual ERROR_OPERATION_ABORTED.)
  void remove(socket_handle s) noexcept {
    auto it = sockets_.find(s);
    if (it == sockets_.end()) return;
    io_handler* h = it->second;
    sockets_.erase(it);
    ::CancelIoEx(reinterpret_cast<HANDLE>(s), nullptr);
    for (io_op** op : {&h->iocp.reading, &h->iocp.writing})
      if (*op) {
        (*op)->stale = true;
        *op = nullptr;
      }
    h->iocp.socket = invalid_socket;
  }

  void send(socket_handle s, io_handler* h, const char* data, std::size_t n) {
    io_op* op = take(h, s, op_send);
    h->iocp.writing = op;
    WSABUF buffer;
    buffer.len = static_cast<ULONG>(std::min<std::size_t>(n, 1u << 30));
    buffer.buf = const_cast<char*>(data);
    if (::WSASend(s, &buffer, 1, nullptr, 0, &op->overlapped, nullptr) != 0) started(op, ::WSAGetLastError());
  }
  void connect(socket_handle s, io_handler* h, const address& to) {
    io_op* op = take(h, s, op_connect);
    h->iocp.writing = op;
    LPFN_CONNECTEX connect_ex = nullptr;
    GUID id = WSAID_CONNECTEX;
    DWORD size = 0;
    if (::WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &connect_ex, sizeof connect_ex, &size,
                   nullptr, nullptr) != 0)
      return started(op, ::WSAGetLastError());
    if (!connect_ex(s, to.get(), to.length, nullptr, 0, nullptr, &op->overlapped)) started(op, ::WSAGetLastError());
  }
  // Starts an AcceptEx on `listener` into a fresh socket; the listener owns `op`.
  std::error_code accept(socket_handle listener, io_handler* h, accept_op& op, int family) {
    op.accepted = open_stream_socket(family);
    if (op.accepted == invalid_socket) return system_error_code(last_socket_error());
    LPFN_ACCEPTEX accept_ex = nullptr;
    GUID id = WSAID_ACCEPTEX;
    DWORD size = 0;
    int e = 0;
    if (::WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &accept_ex, sizeof accept_ex, &size,
                   nullptr, nullptr) != 0)
      e = ::WSAGetLastError();
    if (!e) {
      prepare(op, h, listener, op_accept);
      op.pooled = false;
      ++h->counting()->iocp.outstanding;
      ++in_flight_;
      DWORD received = 0;
      if (accept_ex(listener, op.accepted, op.addresses, 0, accept_op::address_room, accept_op::address_room,
                    &received, &op.overlapped) ||
          ::WSAGetLastError() == ERROR_IO_PENDING)
        return {};
      e = ::WSAGetLastError();
      --h->counting()->iocp.outstanding;
      --in_flight_;
    }
    close_socket(op.accepted);
    op.accepted = invalid_socket;
    return system_error_code(e);
  }

  void wake() { ::PostQueuedCompletionStatus(port_, 0, wake_key, nullptr); }
  std::size_t in_flight() const noexcept { return in_flight_; }
  // For tearing the loop down: cancels every operation on the port and posts no
  // new ones from then on.
  void cancel_all() noexcept {
    settling_ = true;
    for (auto& entry : sockets_) {
      ::CancelIoEx(reinterpret_cast<HANDLE>(entry.first), nullptr);
      for (io_op** op : {&entry.second->iocp.reading, &entry.second->iocp.writing})
        if (*op) {
          (*op)->stale = true;
          *op = nullptr;
        }
    }
  }

  // Dequeues completions for up to `timeout_ms`, calls `woke()` when the wait
  // ends, and hands each live one to `dispatch(handler, op, error, bytes)`;
  // `on_wake` runs for a wake-up. Every
  // completion is counted back, and a retired group whose count reaches zero has
  // its release moved to `released`.
  template <class Woke, class Dispatch, class Wake>
  void wait(int timeout_ms, Woke&& woke, Dispatch&& dispatch, Wake&& on_wake,
            std::vector<std::function<void()>>& released) {
    ULONG n = 0;
    BOOL got = ::GetQueuedCompletionStatusEx(port_, entries_, max_events, &n, static_cast<DWORD>(timeout_ms), FALSE);
    woke();
    if (!got) return;
    for (ULONG i = 0; i < n; ++i) {
      if (!entries_[i].lpOverlapped) {
        on_wake();
        continue;
      }
      io_op* op = reinterpret_cast<io_op*>(entries_[i].lpOverlapped);
      io_handler* h = op->owner;
      io_handler* group = h->counting();
      if (h->iocp.reading == op) h->iocp.reading = nullptr;
      if (h->iocp.writing == op) h->iocp.writing = nullptr;
      --group->iocp.outstanding;
      --in_flight_;
      bool live = !op->stale && !h->retired;
      if (live) {
        std::uint32_t bytes = entries_[i].dwNumberOfBytesTransferred;
        int error = op->failed;
        if (!error && op->overlapped.Internal != 0) {
          DWORD transferred = 0, flags = 0;
          if (!::WSAGetOverlappedResult(op->socket, &op->overlapped, &transferred, FALSE, &flags))
            error = ::WSAGetLastError();
        }
        if (!error && op->kind == op_connect &&
            ::setsockopt(op->socket, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, nullptr, 0) != 0)
          error = ::WSAGetLastError();
        dispatch(h, *op, error, bytes);
      }
      if (op->pooled) give(op);
      if (live && !settling_ && !h->retired && (h->iocp.interest & io_read) && !h->iocp.reading &&
          h->iocp.socket != invalid_socket)
        probe(h);
      if (group->retired && group->iocp.outstanding == 0 && group->iocp.release) {
        released.push_back(std::move(group->iocp.release));
        group->iocp.release = nullptr;
      }
    }
  }

 private:
  static constexpr ULONG max_events = 256;
  static constexpr ULONG_PTR wake_key = 1;

  void prepare(io_op& op, io_handler* h, socket_handle s, unsigned kind) noexcept {
    std::memset(&op.overlapped, 0, sizeof op.overlapped);
    op.owner = h;
    op.socket = s;
    op.kind = kind;
    op.failed = 0;
    op.stale = false;
  }
  io_op* take(io_handler* h, socket_handle s, unsigned kind) {
    io_op* op = free_;
    if (op) free_ = op->next;
    else op = new io_op;
    prepare(*op, h, s, kind);
    op->pooled = true;
    ++h->counting()->iocp.outstanding;
    ++in_flight_;
    return op;
  }
  void give(io_op* op) noexcept {
    op->next = free_;
    free_ = op;
  }
  // After an overlapped call returned non-zero: pending is the normal case; a call
  // that failed at once queues nothing, so its failure is posted by hand and comes
  // back through the port like any other completion.
  void started(io_op* op, int error) {
    if (error == WSA_IO_PENDING || error == ERROR_IO_PENDING) return;
    op->failed = error ? error : WSAEINVAL;
    ::PostQueuedCompletionStatus(port_, 0, 0, &op->overlapped);
  }
  void probe(io_handler* h) {
    io_op* op = take(h, h->iocp.socket, op_probe);
    h->iocp.reading = op;
    WSABUF buffer;
    buffer.len = 0;
    buffer.buf = nullptr;
    DWORD flags = 0;
    if (::WSARecv(h->iocp.socket, &buffer, 1, nullptr, &flags, &op->overlapped, nullptr) != 0)
      started(op, ::WSAGetLastError());
  }

  HANDLE port_ = nullptr;
  std::unordered_map<socket_handle, io_handler*> sockets_;
  io_op* free_ = nullptr;
  std::size_t in_flight_ = 0;
  bool settling_ = false;
  OVERLAPPED_ENTRY entries_[max_events];
};
#endif

// One event loop: a poller, timers, a cross-thread task queue and a wake-up.
class reactor {
 public:
  reactor() { waker_.owner = this; }
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;
  ~reactor() {
#if !defined(HARMONY_USE_IOCP)
    if (wake_read_ >= 0) ::close(wake_read_);
    if (wake_write_ >= 0 && wake_write_ != wake_read_) ::close(wake_write_);
#endif
  }

  std::error_code open() {
    if (auto e = poller_.open()) return e;
#if defined(HARMONY_USE_IOCP)
    // The port itself carries wake-ups: no descriptor to watch.
    now_ = now_ms();
    return {};
#elif defined(HARMONY_USE_EPOLL)
    wake_read_ = wake_write_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_read_ < 0) return system_error_code(errno);
#else
    int p[2];
    if (::pipe(p) != 0) return system_error_code(errno);
    wake_read_ = p[0];
    wake_write_ = p[1];
    if (!set_nonblocking(wake_read_) || !set_nonblocking(wake_write_)) return system_error_code(errno);
#endif
#if !defined(HARMONY_USE_IOCP)
    now_ = now_ms();
    return poller_.add(wake_read_, &waker_, io_read);
#endif
  }

  std::error_code add(socket_handle s, io_handler* h, unsigned interest) { return poller_.add(s, h, interest); }
  void interest(socket_handle s, io_handler* h, unsigned interest) { poller_.interest(s, h, interest); }
  void remove(socket_handle s) { poller_.remove(s); }
  static constexpr bool tracks_interest = poller::tracks_interest;
#if defined(HARMONY_USE_IOCP)
  // The completion-only operations (see the IOCP poller).
  void send(socket_handle s, io_handler* h, const char* data, std::size_t n) { poller_.send(s, h, data, n); }
  void connect(socket_handle s, io_handler* h, const address& to) { poller_.connect(s, h, to); }
  std::error_code accept(socket_handle listener, io_handler* h, accept_op& op, int family) {
    return poller_.accept(listener, h, op, family);
  }
  // Cancels every operation in flight and waits (a few seconds at most) until all
  // have come back, delivering none: for tearing a stopped loop down, before the
  // objects the kernel may still write into are freed.
  void settle() {
    poller_.cancel_all();
    std::int64_t end = now_ms() + 5000;
    while (poller_.in_flight() > 0 && now_ms() < end)
      poller_.wait(100, [] {}, [](io_handler*, io_op&, int, std::uint32_t) {}, [] {}, graveyard_);
    run_graveyard();
  }
#endif

  // Cached at each loop turn, so hot paths never read the clock.
  std::int64_t now() const noexcept { return now_; }

  void schedule(timer& t, std::int64_t deadline) {
    if (t.armed()) cancel(t);
    t.deadline = deadline;
    t.index = timers_.size();
    timers_.push_back(&t);
    timer_up(t.index);
  }
  void cancel(timer& t) {
    if (!t.armed()) return;
    std::size_t i = t.index;
    t.index = static_cast<std::size_t>(-1);
    timer* last = timers_.back();
    timers_.pop_back();
    if (i < timers_.size()) {
      timers_[i] = last;
      last->index = i;
      timer_up(i);
      timer_down(last->index);
    }
  }

  // Thread-safe: runs `task` on the loop thread.
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(tasks_mutex_);
      tasks_.push_back(std::move(task));
    }
    wake();
  }
  void stop() {
    stopping_.store(true, std::memory_order_release);
    wake();
  }
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // Handlers closed during a turn are released after it, when no stale event can reach them.
  void retire(io_handler* h, std::function<void()> release) {
    h->retired = true;
#if defined(HARMONY_USE_IOCP)
    // ... and, with completions, once the last operation they started is back.
    if (h->iocp.outstanding > 0) {
      h->iocp.release = std::move(release);
      return;
    }
#endif
    graveyard_.push_back(std::move(release));
  }

  void run() {
    while (!stopping()) turn();
  }

  void turn() {
    int timeout = -1;
    if (!timers_.empty()) {
      std::int64_t wait = timers_.front()->deadline - now_ms();
      timeout = wait <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(wait, INT_MAX));
    }
    // The clock is read once per turn, as soon as the wait ends.
#if defined(HARMONY_USE_IOCP)
    poller_.wait(
        timeout, [this] { now_ = now_ms(); },
        [](io_handler* h, io_op& op, int error, std::uint32_t bytes) { h->on_complete(op, error, bytes); },
        [this] { wake_posted_.store(false, std::memory_order_release); }, graveyard_);
#else
    poller_.wait(
        timeout, [this] { now_ = now_ms(); },
        [](io_handler* h, unsigned ev) {
          if (!h->retired) h->on_io(ev);
        });
#endif
    while (!timers_.empty() && timers_.front()->deadline <= now_) {
      timer* t = timers_.front();
      cancel(*t);
      t->fire();
    }
    run_tasks();
    run_graveyard();
  }

 private:
  struct waker_handler final : io_handler {
    reactor* owner = nullptr;
    void on_io(unsigned) override { owner->drain_wake(); }
  };

  void run_graveyard() {
    for (std::size_t i = 0; i < graveyard_.size(); ++i) graveyard_[i]();
    graveyard_.clear();
  }
#if defined(HARMONY_USE_IOCP)
  // One wake-up packet in the port at a time is enough: the loop runs every task
  // queued before it dequeues the packet's successor.
  void wake() {
    if (!wake_posted_.exchange(true, std::memory_order_acq_rel)) poller_.wake();
  }
  void drain_wake() {}
  std::atomic<bool> wake_posted_{false};
#else
  void wake() {
    if (wake_write_ < 0) return;
#if defined(HARMONY_USE_EPOLL)
    std::uint64_t one = 1;
    ssize_t r = ::write(wake_write_, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = ::write(wake_write_, &one, 1);
#endif
    (void)r;  // a full pipe or counter already means "wake up"
  }
  void drain_wake() {
    char sink[64];
    while (::read(wake_read_, sink, sizeof sink) > 0) {
    }
  }
#endif
  void run_tasks() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> lock(tasks_mutex_);
      if (tasks_.empty()) return;
      batch.swap(tasks_);
    }
    for (auto& task : batch) task();
  }
  void timer_up(std::size_t i) {
    timer* t = timers_[i];
    while (i > 0) {
      std::size_t parent = (i - 1) / 2;
      if (timers_[parent]->deadline <= t->deadline) break;
      timers_[i] = timers_[parent];
      timers_[i]->index = i;
      i = parent;
    }
    timers_[i] = t;
    t->index = i;
  }
  void timer_down(std::size_t i) {
    timer* t = timers_[i];
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= timers_.size()) break;
      if (child + 1 < timers_.size() && timers_[child + 1]->deadline < timers_[child]->deadline) ++child;
      if (timers_[child]->deadline >= t->deadline) break;
      timers_[i] = timers_[child];
      timers_[i]->index = i;
      i = child;
    }
    timers_[i] = t;
    t->index = i;
  }

  poller poller_;
  waker_handler waker_;
  int wake_read_ = -1;
  int wake_write_ = -1;
  std::int64_t now_ = 0;
  std::vector<timer*> timers_;
  std::mutex tasks_mutex_;
  std::vector<std::function<void()>> tasks_;
  std::vector<std::function<void()>> graveyard_;
  std::atomic<bool> stopping_{false};
};

}  // namespace detail
}  // namespace harmony
