#if defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>iocp-poller  the completion engine's poller: an I/O completion port
struct io_op;

// What the completion engine keeps per socket. The kernel writes into an
// operation until its completion is dequeued, so a handler is released only
// when every operation it started has come back; `group` is the handler that
// counts them (the two sockets of a session count on one) and holds the release.
struct io_handler {
  virtual void on_complete(io_op& op, int error, std::uint32_t bytes) = 0;
  bool retired = false;  // closed: completions still to come are only counted back
  struct iocp_state {
    io_handler* group = nullptr;  // null: this handler
    std::uint32_t outstanding = 0;
    unsigned interest = 0;
    socket_handle socket = invalid_socket;  // while registered
    io_op* reading = nullptr;               // the zero-byte receive in flight
    io_op* writing = nullptr;               // the send or connect in flight
    std::function<void()> release;
  } iocp;
  io_handler* counting() noexcept { return iocp.group ? iocp.group : this; }

 protected:
  ~io_handler() = default;
};

// Windows: an I/O completion port. Readiness is emulated the libuv way: a socket
// that wants to read keeps one zero-byte overlapped WSARecv in flight, which
// completes when data (or a FIN, or a reset) arrives and costs no buffer while the
// connection is idle; the handler then reads with plain non-blocking recv, as on
// POSIX. Interest is level-triggered, like poll: after each delivery the probe is
// posted again while the handler still wants to read. A send that would block goes
// out as an overlapped WSASend of the caller's bytes, which stay put until its
// completion says how many went (see >>iocp for the connection). Connects use ConnectEx
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

class poller {
 public:
  static constexpr bool edge_triggered = false;
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

  // One wake-up packet in the port at a time is enough: the loop runs every task
  // queued before it dequeues the packet's successor.
  void wake() {
    if (!wake_posted_.exchange(true, std::memory_order_acq_rel))
      ::PostQueuedCompletionStatus(port_, 0, wake_key, nullptr);
  }
  // A handler's memory may be released once every operation it (or its group)
  // started has come back: until then the kernel may still write into it.
  bool defer_release(io_handler& h, std::function<void()>& release) {
    if (h.iocp.outstanding == 0) return false;
    h.iocp.release = std::move(release);
    return true;
  }
  // Cancels every operation in flight and waits (a few seconds at most) until all
  // have come back, delivering none: for tearing a stopped loop down, before the
  // objects the kernel may still write into are freed.
  void settle(std::vector<std::function<void()>>& released) {
    cancel_all();
    std::int64_t end = now_ms() + 5000;
    while (in_flight_ > 0 && now_ms() < end) wait(100, [] {}, released);
  }

  // Dequeues completions for up to `timeout_ms`, calls `woke()` when the wait
  // ends, and hands each live one to its handler. Every completion is counted
  // back, and a retired group whose count reaches zero has its release moved to
  // `released`.
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>& released) {
    ULONG n = 0;
    BOOL got = ::GetQueuedCompletionStatusEx(port_, entries_, max_events, &n, static_cast<DWORD>(timeout_ms), FALSE);
    int error = got ? 0 : static_cast<int>(::GetLastError());
    woke();
    if (!got) return error == WAIT_TIMEOUT ? std::error_code{} : system_error_code(error);
    for (ULONG i = 0; i < n; ++i) {
      if (!entries_[i].lpOverlapped) {
        wake_posted_.store(false, std::memory_order_release);
        continue;
      }
      io_op* op = reinterpret_cast<io_op*>(entries_[i].lpOverlapped);
      io_handler* h = op->owner;
      io_handler* group = h->counting();
      if (h->iocp.reading == op) h->iocp.reading = nullptr;
      if (h->iocp.writing == op) h->iocp.writing = nullptr;
      --group->iocp.outstanding;
      --in_flight_;
      bool live = !op->stale && !h->retired && !settling_;
      if (live) {
        std::uint32_t bytes = entries_[i].dwNumberOfBytesTransferred;
        int failure = op->failed;
        if (!failure && op->overlapped.Internal != 0) {
          DWORD transferred = 0, flags = 0;
          if (!::WSAGetOverlappedResult(op->socket, &op->overlapped, &transferred, FALSE, &flags))
            failure = ::WSAGetLastError();
        }
        if (!failure && op->kind == op_connect &&
            ::setsockopt(op->socket, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, nullptr, 0) != 0)
          failure = ::WSAGetLastError();
        h->on_complete(*op, failure, bytes);
      }
      if (op->pooled) give(op);
      if (live && !h->retired && (h->iocp.interest & io_read) && !h->iocp.reading &&
          h->iocp.socket != invalid_socket)
        probe(h);
      if (group->retired && group->iocp.outstanding == 0 && group->iocp.release) {
        released.push_back(std::move(group->iocp.release));
        group->iocp.release = nullptr;
      }
    }
    return {};
  }

 private:
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
  std::atomic<bool> wake_posted_{false};
  OVERLAPPED_ENTRY entries_[max_events];
};

}  // namespace detail
}  // namespace harmony
#endif  // HARMONY_USE_IOCP
