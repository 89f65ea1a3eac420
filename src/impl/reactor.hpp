namespace harmony {
namespace detail {

// >>reactor  one event loop: the engine's poller, timers, posted tasks, releases
class reactor {
 public:
  reactor() = default;
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;

  std::error_code open() {
    now_ = now_ms();
    return poller_.open();
  }

  // For the engine's connection and acceptor: the poller itself.
  poller& engine() noexcept { return poller_; }
  std::error_code add(socket_handle s, io_handler* h, unsigned interest) { return poller_.add(s, h, interest); }
  void interest(socket_handle s, io_handler* h, unsigned interest) { poller_.interest(s, h, interest); }
  void remove(socket_handle s) { poller_.remove(s); }

  // Called on the loop thread when the poller's wait fails (other than by a
  // signal); the loop then pauses briefly so that a lasting failure cannot spin.
  std::function<void(std::error_code)> on_error;

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
    poller_.wake();
  }
  void stop() {
    stopping_.store(true, std::memory_order_release);
    poller_.wake();
  }
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // Releases the owner of a handler closed during this turn: after the turn, when
  // no stale event can reach it, and not before every operation it started in
  // the kernel has come back (the completion engine).
  void retire(io_handler& h, std::function<void()> release) {
    h.retired = true;
    if (!poller_.defer_release(h, release)) graveyard_.push_back(std::move(release));
  }

  // Before the handlers of a stopped loop are freed: waits (a few seconds at most)
  // for the operations still in flight, delivering none.
  void settle() {
    poller_.settle(graveyard_);
    run_graveyard();
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
    if (std::error_code e = poller_.wait(timeout, [this] { now_ = now_ms(); }, graveyard_)) {
      if (on_error) on_error(e);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    while (!timers_.empty() && timers_.front()->deadline <= now_) {
      timer* t = timers_.front();
      cancel(*t);
      t->fire();
    }
    run_tasks();
    run_graveyard();
  }

 private:
  void run_graveyard() {
    for (std::size_t i = 0; i < graveyard_.size(); ++i) graveyard_[i]();
    graveyard_.clear();
  }
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
  std::int64_t now_ = 0;
  std::vector<timer*> timers_;
  std::mutex tasks_mutex_;
  std::vector<std::function<void()>> tasks_;
  std::vector<std::function<void()>> graveyard_;
  std::atomic<bool> stopping_{false};
};

}  // namespace detail
}  // namespace harmony
