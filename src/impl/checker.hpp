namespace harmony {
namespace detail {

// >>checker  the health monitor: the registry's sweep and the active checks, on the first loop
// Every second it sweeps the registry, so that what time alone changes (an ack too
// old, a back-off over) is noticed and logged. With check_interval set it probes
// every backend once per interval through the connection layer: the round's
// probes are spread evenly over the interval, each bounded by the check timeout,
// so no probe blocks the loop and many backends never connect at once.
class health_monitor {
 public:
  health_monitor(server::impl& srv, reactor& loop) : srv_(srv), loop_(loop) {
    interval_ms_ = srv.options.check_interval.count();
    sweep_.fire = [this] { sweep(); };
    tick_.fire = [this] { tick(); };
  }
  ~health_monitor() {
    loop_.cancel(sweep_);
    loop_.cancel(tick_);
    for (auto& p : probes_) {
      loop_.cancel(p.second->deadline);
      p.second->io.close(true);
    }
    loop_.settle();  // the probes' streams are memory the kernel may still write
  }
  health_monitor(const health_monitor&) = delete;
  health_monitor& operator=(const health_monitor&) = delete;

  void start() {
    loop_.schedule(sweep_, loop_.now() + sweep_ms);
    if (interval_ms_ > 0) loop_.schedule(tick_, loop_.now());
  }

  // server::reconfigure, on this loop: a new check_interval starts a new round at once
  // (0 ends the checks; probes in flight finish).
  void set_interval(std::int64_t ms) {
    if (ms == interval_ms_) return;
    interval_ms_ = ms;
    loop_.cancel(tick_);
    next_ = round_.size();
    if (interval_ms_ > 0) loop_.schedule(tick_, loop_.now());
  }

  static constexpr std::int64_t sweep_ms = 1000;

 private:
  struct probe {
    explicit probe(reactor& loop) : io(loop) {}
    stream io;
    timer deadline;
    std::string id;
    std::string reply;  // what came back so far, with check_expect
    bool done = false;
  };

  void sweep() {
    srv_.backends.lock()->sweep(loop_.now());
    loop_.schedule(sweep_, loop_.now() + sweep_ms);
  }

  // Launches the probes that are due; a new round begins when the last one is.
  void tick() {
    std::int64_t now = loop_.now();
    if (next_ >= round_.size()) {
      round_ = srv_.backends.lock()->check_targets();
      next_ = 0;
      round_start_ = now;
      if (round_.empty()) return loop_.schedule(tick_, now + interval_ms_);
    }
    while (next_ < round_.size() && due(next_) <= now) launch(round_[next_++]);
    loop_.schedule(tick_, next_ < round_.size() ? due(next_) : round_start_ + interval_ms_);
  }
  std::int64_t due(std::size_t i) const noexcept {
    return round_start_ + interval_ms_ * static_cast<std::int64_t>(i) / static_cast<std::int64_t>(round_.size());
  }

  void launch(const registry::check_target& t) {
    auto owned = std::make_unique<probe>(loop_);
    probe* p = owned.get();
    probes_.emplace(p, std::move(owned));
    p->id = t.id;
    p->deadline.fire = [this, p] { finish(*p, false, "timed out"); };
    p->io.on_connect = [this, p](std::error_code e) {
      if (e) return finish(*p, false, e.message());
      const server_options& o = srv_.options;
      if (!o.check_send.empty()) p->io.write(o.check_send);
      if (o.check_expect.empty()) finish(*p, true, {});
    };
    p->io.on_data = [this, p](std::string_view bytes) {
      const std::string& expect = srv_.options.check_expect;
      if (p->done || expect.empty()) return;
      p->reply.append(bytes.data(), bytes.size());
      if (p->reply.find(expect) != std::string::npos) return finish(*p, true, {});
      // Only the last bytes can begin a match that is still to come.
      std::size_t keep = std::max<std::size_t>(expect.size(), max_check_text);
      if (p->reply.size() > 2 * keep) p->reply.erase(0, p->reply.size() - keep);
    };
    p->io.on_close = [this, p](std::error_code e) {
      finish(*p, false, e ? e.message() : std::string("closed before the expected reply"));
    };
    std::int64_t timeout_ms = std::min<std::int64_t>(srv_.options.connect_timeout.count(), interval_ms_);
    loop_.schedule(p->deadline, loop_.now() + timeout_ms);
    if (std::error_code e = p->io.connect(to_os_address(t.to))) finish(*p, false, e.message());
  }

  void finish(probe& p, bool ok, const std::string& why) {
    if (p.done) return;
    p.done = true;
    loop_.cancel(p.deadline);
    srv_.backends.lock()->checked(p.id, ok, why, loop_.now());
    p.io.close(!ok);
    probe* raw = &p;
    loop_.retire(p.io.socket(), [this, raw] { probes_.erase(raw); });
  }

  server::impl& srv_;
  reactor& loop_;
  std::int64_t interval_ms_ = 0;
  timer sweep_;
  timer tick_;
  std::vector<registry::check_target> round_;  // this round's backends
  std::size_t next_ = 0;                       // the next of them to probe
  std::int64_t round_start_ = 0;
  std::unordered_map<probe*, std::unique_ptr<probe>> probes_;
};

}  // namespace detail
}  // namespace harmony
