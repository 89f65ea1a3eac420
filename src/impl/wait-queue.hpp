namespace harmony {
namespace detail {

// >>wait-queue  sans-IO FIFO of connections waiting for a concurrency slot
// The connections a loop holds back under the concurrency limit, oldest first.
// Intrusive: an element carries its own wait_hook, so push, remove (from
// anywhere: a waiting client that hangs up or times out) and pop are O(1) and
// never allocate. Each element records when it joined, so the caller can time
// out the oldest without a timer per element. Not thread-safe: one loop owns it.
//
//   struct conn { wait_hook<conn> waiting; ... };
//   wait_queue<conn, &conn::waiting> q;
template <class T>
struct wait_hook {
  T* next = nullptr;
  T* prev = nullptr;
  std::int64_t since = 0;  // when it joined the queue
  bool queued = false;
};

template <class T, wait_hook<T> T::*Hook>
class wait_queue {
 public:
  wait_queue() = default;
  wait_queue(const wait_queue&) = delete;
  wait_queue& operator=(const wait_queue&) = delete;

  // Appends `x` as the newest element; false (and no change) if it is queued already.
  bool push(T* x, std::int64_t now) {
    wait_hook<T>& h = x->*Hook;
    if (h.queued) return false;
    h.next = nullptr;
    h.prev = tail_;
    h.since = now;
    h.queued = true;
    if (tail_) (tail_->*Hook).next = x;
    else head_ = x;
    tail_ = x;
    ++length_;
    return true;
  }

  // Puts `x` back as the oldest element, keeping the time it first joined
  // (`since`), e.g. one that was let go and could not proceed; false if queued.
  bool push_front(T* x) {
    wait_hook<T>& h = x->*Hook;
    if (h.queued) return false;
    h.prev = nullptr;
    h.next = head_;
    h.queued = true;
    if (head_) (head_->*Hook).prev = x;
    else tail_ = x;
    head_ = x;
    ++length_;
    return true;
  }

  // Takes `x` out wherever it is; false if it was not queued.
  bool remove(T* x) {
    wait_hook<T>& h = x->*Hook;
    if (!h.queued) return false;
    if (h.prev) (h.prev->*Hook).next = h.next;
    else head_ = h.next;
    if (h.next) (h.next->*Hook).prev = h.prev;
    else tail_ = h.prev;
    h.next = h.prev = nullptr;
    h.queued = false;
    --length_;
    return true;
  }

  // Takes out and returns the oldest element, or nullptr when empty.
  T* pop() {
    T* x = head_;
    if (x) remove(x);
    return x;
  }

  T* oldest() const noexcept { return head_; }
  // When the oldest element joined; meaningful only when not empty.
  std::int64_t oldest_since() const noexcept { return head_ ? (head_->*Hook).since : 0; }
  static bool contains(const T* x) noexcept { return (x->*Hook).queued; }
  std::size_t size() const noexcept { return length_; }
  bool empty() const noexcept { return length_ == 0; }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
  std::size_t length_ = 0;
};

}  // namespace detail
}  // namespace harmony
