namespace harmony {
namespace detail {

// >>pools  relay buffers and splice pipes, taken only while bytes are in flight
// Relay buffers in two sizes, taken only while data is in flight. A direction
// starts with a small one and moves to a large one while its source keeps
// filling whole buffers: bulk transfers then cost few system calls, and short
// exchanges little memory. Each size keeps a bounded number of spares.
class buffer_pool {
 public:
  buffer_pool(std::size_t small, std::size_t large) {
    classes_[0].size = small;
    classes_[1].size = std::max(small, large);
    for (auto& c : classes_) c.keep = std::max<std::size_t>(4, spare_bytes / c.size);
  }
  ~buffer_pool() {
    for (auto& c : classes_)
      for (char* b : c.free) delete[] b;
  }
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;
  char* take(bool large) {
    size_class& c = classes_[large];
    if (c.free.empty()) return new char[c.size];
    char* b = c.free.back();
    c.free.pop_back();
    return b;
  }
  void give(char* b, bool large) {
    size_class& c = classes_[large];
    if (c.free.size() < c.keep) return c.free.push_back(b);
    delete[] b;
    released_ += c.size;
    if (released_ >= trim_after && on_surplus) on_surplus();
  }
  // Bytes of buffers freed beyond the spares since the last call. After a burst
  // they sit in the allocator's heap as holes it may not return by itself.
  std::size_t take_released() noexcept { return std::exchange(released_, 0); }
  static constexpr std::size_t trim_after = 1u << 20;
  std::function<void()> on_surplus;  // called once a burst freed trim_after bytes
  std::size_t size(bool large) const noexcept { return classes_[large].size; }

 private:
  static constexpr std::size_t spare_bytes = 4u << 20;  // per size, per loop
  struct size_class {
    std::size_t size = 0;
    std::size_t keep = 0;
    std::vector<char*> free;
  };
  size_class classes_[2];
  std::size_t released_ = 0;
};

// Pipes for splice(2) on Linux. A streaming direction borrows one while bytes sit
// in it and gives it back empty, so an idle connection holds no pipe and no descriptor.
struct kernel_pipe {
  int read = -1;
  int write = -1;
  std::uint32_t capacity = 0;
  bool valid() const noexcept { return read >= 0; }
};

#if defined(__linux__)
class pipe_pool {
 public:
  pipe_pool() { spare_.reserve(keep); }
  ~pipe_pool() {
    for (kernel_pipe& p : spare_) shut(p);
  }
  pipe_pool(const pipe_pool&) = delete;
  pipe_pool& operator=(const pipe_pool&) = delete;
  // False when the loop already has its share of pipes or the system has no
  // descriptor to spare: the direction then goes through a buffer.
  bool take(kernel_pipe& out) noexcept {
    if (!spare_.empty()) {
      out = spare_.back();
      spare_.pop_back();
      return true;
    }
    if (open_ >= max_open) return false;
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    // A bigger pipe moves more per call. Past the user's pipe allowance
    // (fs.pipe-user-pages-soft) the kernel refuses, and the pipe works at its size.
    ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(wanted_bytes));
    int size = ::fcntl(fds[1], F_GETPIPE_SZ);
    out.read = fds[0];
    out.write = fds[1];
    out.capacity = size > 0 ? static_cast<std::uint32_t>(size) : 4096u;
    ++open_;
    return true;
  }
  // Bytes left in a pipe belong to a connection that is gone: such a pipe is closed.
  void give(kernel_pipe& p, bool empty) noexcept {
    if (!p.valid()) return;
    if (empty && spare_.size() < keep) {
      spare_.push_back(p);
    } else {
      shut(p);
      --open_;
    }
    p = kernel_pipe{};
  }

 private:
  static void shut(kernel_pipe& p) noexcept {
    ::close(p.read);
    ::close(p.write);
  }
  static constexpr std::size_t max_open = 256;  // per loop: 512 descriptors at most
  static constexpr std::size_t keep = 16;
  static constexpr std::size_t wanted_bytes = 1u << 20;
  std::vector<kernel_pipe> spare_;
  std::size_t open_ = 0;
};
#endif

}  // namespace detail
}  // namespace harmony
