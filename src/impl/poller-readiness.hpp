#if !defined(HARMONY_USE_IOCP)
namespace harmony {
namespace detail {

// >>pollers  the readiness pollers: epoll (edge-triggered) and poll (level-triggered)
struct io_handler {
  virtual void on_io(unsigned events) = 0;
  bool retired = false;  // closed during this loop turn: its pending events are stale

 protected:
  ~io_handler() = default;
};

// Wakes a poller from another thread: an eventfd on Linux, a pipe elsewhere.
// A full pipe or counter already means "wake up", so a failed write is harmless.
class wake_channel final : public io_handler {
 public:
  wake_channel() = default;
  wake_channel(const wake_channel&) = delete;
  wake_channel& operator=(const wake_channel&) = delete;
  ~wake_channel() {
    if (read_ >= 0) ::close(read_);
    if (write_ >= 0 && write_ != read_) ::close(write_);
  }
  std::error_code open() {
#if defined(HARMONY_USE_EPOLL)
    read_ = write_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (read_ < 0) return system_error_code(errno);
#else
    int p[2];
    if (::pipe(p) != 0) return system_error_code(errno);
    read_ = p[0];
    write_ = p[1];
    if (!set_nonblocking(read_) || !set_nonblocking(write_)) return system_error_code(errno);
#endif
    return {};
  }
  int descriptor() const noexcept { return read_; }
  void wake() noexcept {
    if (write_ < 0) return;
#if defined(HARMONY_USE_EPOLL)
    std::uint64_t one = 1;
    ssize_t r = ::write(write_, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = ::write(write_, &one, 1);
#endif
    (void)r;
  }
  void on_io(unsigned) override {
    char sink[64];
    while (::read(read_, sink, sizeof sink) > 0) {
    }
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

// What the readiness pollers share: the wake channel, and the contract's parts
// that only the completion engine needs.
class readiness_poller_base {
 public:
  void wake() noexcept { waker_.wake(); }
  void settle(std::vector<std::function<void()>>&) noexcept {}
  bool defer_release(io_handler&, std::function<void()>&) noexcept { return false; }

 protected:
  wake_channel waker_;
};

#if defined(HARMONY_USE_EPOLL)
// Edge-triggered: each socket is registered once for everything, so changing what
// a connection waits for costs no system call; connections track readiness themselves.
class poller : public readiness_poller_base {
 public:
  static constexpr bool edge_triggered = true;
  poller() = default;
  poller(const poller&) = delete;
  poller& operator=(const poller&) = delete;
  ~poller() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::error_code open() {
    fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd_ < 0) return system_error_code(errno);
    if (auto e = waker_.open()) return e;
    return add(waker_.descriptor(), &waker_, io_read);
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
  // Waits up to `timeout_ms`, calls `woke()` as soon as the wait ends and then
  // each ready handler. A failed wait other than EINTR is returned.
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>&) {
    int n = ::epoll_wait(fd_, events_, max_events, timeout_ms);
    int error = n < 0 ? errno : 0;
    woke();
    for (int i = 0; i < n; ++i) {
      unsigned ev = 0, e = events_[i].events;
      if (e & EPOLLIN) ev |= io_read;
      if (e & EPOLLOUT) ev |= io_write;
      if (e & EPOLLERR) ev |= io_error | io_read | io_write;
      if (e & (EPOLLRDHUP | EPOLLHUP)) ev |= io_peer_closed | io_read;
      if (e & EPOLLHUP) ev |= io_write;
      auto* h = static_cast<io_handler*>(events_[i].data.ptr);
      if (!h->retired) h->on_io(ev);
    }
    return error && error != EINTR ? system_error_code(error) : std::error_code{};
  }

 private:
  static constexpr int max_events = 256;
  int fd_ = -1;
  epoll_event events_[max_events];
};
#elif defined(HARMONY_USE_POLL)
// Level-triggered poll(2): connections state what they wait for.
class poller : public readiness_poller_base {
 public:
  static constexpr bool edge_triggered = false;
  std::error_code open() {
    if (auto e = waker_.open()) return e;
    return add(waker_.descriptor(), &waker_, io_read);
  }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) {
    if (s < 0) return system_error_code(EBADF);
    if (static_cast<std::size_t>(s) >= slot_of_.size()) slot_of_.resize(static_cast<std::size_t>(s) + 1, -1);
    slot_of_[static_cast<std::size_t>(s)] = static_cast<int>(fds_.size());
    pollfd p{};
    p.fd = watched(s, interest);
    p.events = mask(interest);
    fds_.push_back(p);
    handlers_.push_back(h);
    return {};
  }
  void interest(socket_handle s, io_handler*, unsigned interest) noexcept {
    int slot = lookup(s);
    if (slot < 0) return;
    pollfd& p = fds_[static_cast<std::size_t>(slot)];
    p.fd = watched(s, interest);
    p.events = mask(interest);
  }
  void remove(socket_handle s) noexcept {
    int slot = lookup(s);
    if (slot < 0) return;
    std::size_t i = static_cast<std::size_t>(slot), last = fds_.size() - 1;
    if (i != last) {
      fds_[i] = fds_[last];
      handlers_[i] = handlers_[last];
      slot_of_[static_cast<std::size_t>(descriptor(fds_[i]))] = slot;
    }
    fds_.pop_back();
    handlers_.pop_back();
    slot_of_[static_cast<std::size_t>(s)] = -1;
  }
  template <class Woke>
  std::error_code wait(int timeout_ms, Woke&& woke, std::vector<std::function<void()>>&) {
    int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout_ms);
    int error = n < 0 ? errno : 0;
    woke();
    if (n <= 0) return error && error != EINTR ? system_error_code(error) : std::error_code{};
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
    for (auto& r : ready_)
      if (!r.first->retired) r.first->on_io(r.second);
    return {};
  }

 private:
  // poll(2) reports a hang-up or an error even for a descriptor that asks for
  // nothing, and level-triggered it would report it on every turn: a connection
  // that waits for nothing (a client in the wait queue that hung up) would spin
  // the loop. A negative descriptor is skipped by poll, so that is how "nothing" is said.
  static int watched(socket_handle s, unsigned interest) noexcept { return interest ? s : -1 - s; }
  static int descriptor(const pollfd& p) noexcept { return p.fd < 0 ? -1 - p.fd : p.fd; }
  static short mask(unsigned interest) noexcept {
    return static_cast<short>(((interest & io_read) ? POLLIN : 0) | ((interest & io_write) ? POLLOUT : 0));
  }
  int lookup(socket_handle s) const noexcept {
    return s >= 0 && static_cast<std::size_t>(s) < slot_of_.size() ? slot_of_[static_cast<std::size_t>(s)] : -1;
  }
  std::vector<pollfd> fds_;
  std::vector<io_handler*> handlers_;
  std::vector<int> slot_of_;
  std::vector<std::pair<io_handler*, unsigned>> ready_;
};
#endif

}  // namespace detail
}  // namespace harmony
#endif  // !HARMONY_USE_IOCP
