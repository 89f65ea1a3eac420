#include <condition_variable>

namespace harmony {
namespace detail {

// >>state-keeper  the server's state-file thread: writes the kept registry off the event loops
// How long after a change the state file is written (changes in between join it), and
// the least time between two writes: a burst of registrations, or thousands of agents
// acking, cost at most one write a second.
inline constexpr duration state_write_delay{100};
inline constexpr duration state_write_interval{1000};
// The largest state file read (a full registry of 100,000 backends is about 25 MB).
inline constexpr std::size_t max_state_file_bytes = std::size_t{256} << 20;

// One thread per server with a state file. changed() (called under the registry's lock,
// on any thread) only marks the state dirty; the thread then takes a snapshot (the
// registry's lock, briefly) and writes it with replace_file (fsync and rename), so no
// event loop ever waits for the disk. stop() ends the thread and writes the last state.
class state_keeper {
 public:
  using snapshot_function = std::function<std::string()>;  // the file's text now

  state_keeper(std::string path, snapshot_function snapshot, const logger& log)
      : path_(std::move(path)), snapshot_(std::move(snapshot)), log_(log) {}
  ~state_keeper() { stop(); }
  state_keeper(const state_keeper&) = delete;
  state_keeper& operator=(const state_keeper&) = delete;

  void start() {
    thread_ = std::thread([this] { run(); });
  }

  // Thread-safe and cheap: a write follows within state_write_delay to state_write_interval.
  void changed() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (dirty_) return;
    dirty_ = true;
    dirty_since_ = clock::now();
    wake_.notify_one();
  }

  // Ends the thread, then writes the state as it is now (unless `last_write` is false:
  // an upgrade's successor owns the file now). Idempotent (writes once).
  void stop(bool last_write = true) {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      wake_.notify_one();
    }
    thread_.join();
    if (last_write) write();
  }

 private:
  void run() {
    block_sigpipe_on_this_thread();
    std::unique_lock<std::mutex> lock(mutex_);
    clock::time_point last_write = clock::now() - state_write_interval;
    while (!stopping_) {
      wake_.wait(lock, [this] { return stopping_ || dirty_; });
      if (stopping_) break;
      clock::time_point when = std::max(dirty_since_ + state_write_delay, last_write + state_write_interval);
      if (wake_.wait_until(lock, when, [this] { return stopping_; })) break;  // stop() writes
      dirty_ = false;
      lock.unlock();
      bool written = write();
      lock.lock();
      last_write = clock::now();
      if (!written && !dirty_) {  // a full disk, a reader holding it (Windows): again in a moment
        dirty_ = true;
        dirty_since_ = last_write;
      }
    }
  }

  bool write() {
    std::string text = snapshot_();
    std::error_code e = replace_file(path_, text);
    if (e) {
      if (!failing_) log_(log_level::error, "cannot write the state file %s: %s", path_.c_str(), e.message().c_str());
      failing_ = true;
      return false;
    }
    if (failing_) log_(log_level::info, "the state file %s is written again", path_.c_str());
    failing_ = false;
    return true;
  }

  std::string path_;
  snapshot_function snapshot_;
  const logger& log_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool dirty_ = false;
  bool stopping_ = false;
  clock::time_point dirty_since_;
  bool failing_ = false;  // the thread's, then stop()'s once it has joined
};

}  // namespace detail
}  // namespace harmony
