namespace harmony {
namespace detail {

// >>health  a backend's health: passive failure counting, one trial, back-off, active checks
// Sans-IO: plain data, time passed in (milliseconds). The registry keeps one per
// backend and asks it whether the backend may take a connection; the sessions
// report what their attempts did, the checker what its probes did.
//
// Passive (nginx's max_fails / fail_timeout): `max_fails` failed attempts within
// `fail_timeout` take the backend out for `fail_timeout`. Then exactly one
// connection is let through as a trial: when the backend answers it, the backend
// is back; when it fails, the backend is out again for twice as long as the last
// time, up to health_policy::max_out_ms. max_fails 0 turns passive detection off.
//
// Active: `fall` failed probes in a row mark the backend down, `rise` good ones in a
// row mark it up again (HAProxy's rise and fall). A good probe also lets a passively
// failed backend take its trial at once instead of waiting out its back-off.
// What a proxied connection's attempt on a backend came to, as the session reports it.
enum class attempt_outcome {
  failed,     // refused, connect timeout, reset before the backend's first byte
  answered,   // the backend sent its first byte, or served the connection without failing
  abandoned,  // the connection ended before the attempt could tell
};

struct health_policy {
  int max_fails = 1;
  std::int64_t fail_timeout_ms = 10000;
  std::int64_t max_out_ms = 300000;  // the cap of the back-off
  // A trial that has not been decided after this long is given up, so that a lost
  // report cannot keep a backend out for ever.
  std::int64_t trial_limit_ms = 60000;
  int rise = 2;
  int fall = 3;

  // How long a backend stays out after its `strikes`-th failed trial in a row
  // (0: the failures that first took it out).
  std::int64_t out_for(int strikes) const noexcept {
    std::int64_t cap = std::max(max_out_ms, fail_timeout_ms);
    std::int64_t t = fail_timeout_ms;
    for (int i = 0; i < strikes && t < cap; ++i) t *= 2;
    return std::min(t, cap);
  }
};

class backend_health {
 public:
  // Whether it may take a new connection now (a trial included).
  bool usable(std::int64_t now) const noexcept {
    if (checked_down_) return false;
    if (!out_) return true;
    return now >= retry_at_ && (!trial_ || now - trial_since_ > trial_limit_ms_);
  }
  // Out of rotation by either detector (a trial may still be due): its state is "down".
  bool down() const noexcept { return out_ || checked_down_; }
  bool passively_out() const noexcept { return out_; }
  bool checked_down() const noexcept { return checked_down_; }
  // When a passively failed backend may take its trial.
  std::int64_t retry_at() const noexcept { return retry_at_; }
  // Whether an attempt's outcome may change anything: a trial, or failures being counted.
  bool watching() const noexcept { return out_ || fails_ > 0; }

  // A connection was given to it; true when that connection is its trial.
  bool picked(std::int64_t now, const health_policy& p) noexcept {
    if (!out_) return false;
    trial_ = true;
    trial_since_ = now;
    trial_limit_ms_ = p.trial_limit_ms;
    return true;
  }

  // An attempt failed (refused, connect timeout, reset before the first byte). True
  // when this took the backend out (again).
  bool failed(std::int64_t now, bool trial, const health_policy& p) noexcept {
    if (p.max_fails <= 0) return false;
    if (out_) {
      if (!trial) return false;  // an attempt that began before it went out says nothing new
      trial_ = false;
      ++strikes_;
      retry_at_ = now + p.out_for(strikes_);
      return true;
    }
    if (fails_ == 0 || now - first_fail_ > p.fail_timeout_ms) {
      fails_ = 0;
      first_fail_ = now;
    }
    if (++fails_ < p.max_fails) return false;
    out_ = true;
    trial_ = false;
    strikes_ = 0;
    fails_ = 0;
    retry_at_ = now + p.out_for(0);
    return true;
  }

  // An attempt succeeded (the backend answered, or served the connection). True when
  // this brought the backend back.
  bool succeeded(bool trial) noexcept {
    if (!out_) {
      fails_ = 0;
      return false;
    }
    if (!trial) return false;
    out_ = trial_ = false;
    strikes_ = 0;
    return true;
  }

  // The trial connection ended before it could tell (the client left first).
  void abandoned(bool trial) noexcept {
    if (trial) trial_ = false;
  }

  // One active probe's result. True when it changed checked_down().
  bool checked(bool ok, std::int64_t now, const health_policy& p) noexcept {
    if (ok) {
      fall_count_ = 0;
      if (out_ && !trial_) retry_at_ = std::min(retry_at_, now);
      if (!checked_down_) return false;
      if (++rise_count_ < p.rise) return false;
      checked_down_ = false;
      rise_count_ = 0;
      return true;
    }
    rise_count_ = 0;
    if (checked_down_) return false;
    if (++fall_count_ < p.fall) return false;
    checked_down_ = true;
    fall_count_ = 0;
    return true;
  }

  // Active checks were turned off: only passive detection judges it.
  void forget_checks() noexcept { checked_down_ = false, rise_count_ = fall_count_ = 0; }

 private:
  bool out_ = false;           // passively out of rotation
  bool trial_ = false;         // its trial connection is going on
  bool checked_down_ = false;  // active checks failed `fall` times in a row
  int fails_ = 0;              // failures in the window that began at first_fail_
  int strikes_ = 0;            // failed trials since it went out
  int rise_count_ = 0;
  int fall_count_ = 0;
  std::int64_t first_fail_ = 0;
  std::int64_t retry_at_ = 0;
  std::int64_t trial_since_ = 0;
  std::int64_t trial_limit_ms_ = 0;
};

}  // namespace detail
}  // namespace harmony
