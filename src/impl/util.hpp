namespace harmony {
namespace detail {

// >>util  logging, number parsing
struct logger {
  log_function fn;
  // server::reconfigure changes it while the loops log.
  std::atomic<log_level> level{log_level::off};
  bool enabled(log_level l) const noexcept { return fn && log_enabled(level.load(std::memory_order_relaxed), l); }
#if defined(__MINGW32__)
  // MinGW's libstdc++ routes vsnprintf to the C99-conforming printf (%zu, %lld).
  __attribute__((format(gnu_printf, 3, 4)))
#elif defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  void
  operator()(log_level l, const char* format, ...) const {
    if (!enabled(l)) return;
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    fn(l, text);
  }
};

// Lets a message that may repeat at a high rate (a flood of refused connections) through
// at most once per interval, and counts those it held back. Thread-safe.
class log_gate {
 public:
  explicit log_gate(std::int64_t interval_ms = 10000) noexcept : interval_(interval_ms) {}
  // True when a message may go out at `now` (ms); `held` is then how many were held back
  // since the last one that went out.
  bool pass(std::int64_t now, std::uint64_t& held) noexcept {
    std::int64_t next = next_.load(std::memory_order_relaxed);
    if (now < next || !next_.compare_exchange_strong(next, now + interval_, std::memory_order_relaxed)) {
      held_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    held = held_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  std::int64_t interval_;
  std::atomic<std::int64_t> next_{std::numeric_limits<std::int64_t>::min()};
  std::atomic<std::uint64_t> held_{0};
};

inline bool parse_uint(std::string_view text, std::uint64_t limit, std::uint64_t& out) noexcept {
  if (text.empty() || text.size() > 20) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (limit - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

}  // namespace detail
}  // namespace harmony
