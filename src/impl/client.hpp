namespace harmony {

// >>client-impl  harmony::client: one event loop, one link per balancer
// Each balancer has a link of its own: its stream, heartbeat, backoff and
// reconnects, independent of the others. The identity is shared: the first
// balancer that assigns an id defines it, and every other link registers under it
// (`register ... id=ID`). Until one exists, only one link at a time registers
// without an id; the others wait connected (one heartbeat interval at most), so
// that two balancers do not hand out two ids at once.
struct client::impl {
  enum class state { idle, connecting, authenticating, waiting, registering, registered, closing, closed };

  struct link {
    link(impl& o, std::size_t i, std::string a) : owner(o), index(i), address(std::move(a)), io(o.loop) {
      beat.fire = [this] { owner.on_beat(*this); };
      retry.fire = [this] { owner.connect_now(*this); };
    }
    link(const link&) = delete;
    link& operator=(const link&) = delete;

    impl& owner;
    std::size_t index;  // into statuses
    std::string address;
    detail::stream io;
    detail::line_splitter lines{4096};
    detail::timer beat, retry;
    state phase = state::idle;
    std::string asked;            // the id its register asked for; empty: none
    bool asked_without_id = false;  // a register without an id is in flight on it
    int sent_weight = 0;          // the weight its register carried
    std::int64_t backoff = 100;
    std::int64_t last_heard = 0;
    std::string id;  // the id this balancer knows the backend by
    bool outage = false;  // the balancer cannot be reached: said once, and once when it can again
  };

  explicit impl(client_options o) : options(std::move(o)), log{options.log, options.level} {
    give_up.fire = [this] { loop.stop(); };
    std::vector<std::string> addresses = options.balancers;
    if (addresses.empty()) addresses.push_back(options.balancer);
    for (std::size_t i = 0; i < addresses.size(); ++i) {
      links.push_back(std::make_unique<link>(*this, i, addresses[i]));
      balancer_status s;
      s.balancer = addresses[i];
      statuses.push_back(std::move(s));
    }
  }

  void connect_now(link& l) {
    endpoint at;
    detail::address to;
    std::error_code e = parse_endpoint(l.address, at);
    if (!e) e = detail::resolve(at, to, false);
    if (!e) {
      l.phase = state::connecting;
      l.lines = detail::line_splitter{4096};
      e = l.io.connect(to);
    }
    if (e) unreachable(l, e);
  }

  // Logged at warn once per outage (later attempts at debug), then retried with backoff.
  void unreachable(link& l, std::error_code e) {
    log(l.outage ? log_level::debug : log_level::warn, "agent: cannot reach the balancer %s: %s (retrying)",
        l.address.c_str(), e.message().c_str());
    l.outage = true;
    schedule_retry(l);
  }

  void on_connect(link& l, std::error_code e) {
    if (e) return unreachable(l, e);
    if (l.outage) log(log_level::info, "agent: reached the balancer %s again", l.address.c_str());
    l.outage = false;
    l.last_heard = loop.now();
    l.io.write("hello harmony/1\n");
    loop.schedule(l.beat, loop.now() + options.ack.count());
    // With a secret, hello's reply carries the nonce to answer before registering.
    if (!options.secret.empty()) {
      l.phase = state::authenticating;
      return;
    }
    try_register(l);
  }

  // hello's reply, with a secret: the proof for its nonce, then the registration
  // right behind it (the balancer ends the connection if the proof is wrong).
  void on_hello(link& l, const detail::command_line& c) {
    std::string_view nonce;
    if (c.option("nonce", nonce)) {
      l.io.write("auth " + detail::admin_auth_proof(options.secret, nonce) + "\n");
    } else {
      log(log_level::debug, "agent: %s asks for no secret", l.address.c_str());
    }
    try_register(l);
  }

  // Registers under the id this balancer knows, else under the identity; without
  // either it asks for a new id, unless another link already does.
  // A link waits at most one heartbeat interval (`force`): a balancer that never
  // answers must not keep the others unregistered.
  void try_register(link& l, bool force = false) {
    std::string wanted = l.id.empty() ? id() : l.id;
    if (wanted.empty() && !force)
      for (auto& other : links)
        if (other.get() != &l && other->asked_without_id) {
          l.phase = state::waiting;
          return;
        }
    l.phase = state::registering;
    l.asked = wanted;
    l.asked_without_id = wanted.empty();
    l.sent_weight = options.weight;
    std::string line = "register port=" + std::to_string(options.port) + " weight=" + std::to_string(options.weight) +
                       " heartbeat=" + std::to_string(options.ack.count()) + "ms";
    if (!wanted.empty()) line += " id=" + wanted;
    if (!options.host.empty()) line += " host=" + options.host;
    if (options.proxy != proxy_protocol::none) line += std::string(" proxy=") + to_string(options.proxy);
    l.io.write(line + "\n");
  }

  // Links that wait for the identity, or for their turn to ask for one.
  void release_waiters() {
    for (auto& l : links)
      if (l->phase == state::waiting) try_register(*l);
  }

  void on_line(link& l, std::string_view line) {
    l.last_heard = loop.now();
    detail::command_line c = detail::parse_command(line);
    if (c.verb == "notice") {
      log(log_level::warn, "agent: balancer %s says: %.*s", l.address.c_str(), static_cast<int>(line.size()), line.data());
      return;
    }
    std::string_view value;
    if (c.verb == "ok" && !c.args.empty() && c.args[0] == "harmony/1" && options.secret.empty() &&
        c.option("nonce", value))
      log(log_level::error, "agent: %s requires a secret (client_options::secret, --secret-file)", l.address.c_str());
    if (c.verb == "err") {
      log(log_level::warn, "agent: balancer %s says: %.*s", l.address.c_str(), static_cast<int>(line.size()), line.data());
      if (l.phase == state::registering || l.phase == state::authenticating) return drop(l, false);
      // A close the balancer cannot do (the backend is gone already) is done all the same.
      if (l.phase == state::closing && !c.args.empty() && (c.args[0] == "unknown-backend" || c.args[0] == "not-registered"))
        return finish(l);
      return;
    }
    if (c.verb == "ok" && l.phase == state::authenticating) return on_hello(l, c);
    if (c.verb == "ok" && l.phase == state::registering && c.option("id", value)) return registered_as(l, value);
    if (c.verb == "ok" && l.phase == state::closing && !c.args.empty() && c.args[0] == "closed") finish(l);
  }

  void registered_as(link& l, std::string_view value) {
    std::string new_id(value);
    if (!l.asked.empty() && new_id != l.asked)
      log(log_level::warn, "agent: %s refused the id %s (taken): registered as %s there", l.address.c_str(),
          l.asked.c_str(), new_id.c_str());
    l.id = new_id;
    l.asked_without_id = false;
    l.phase = state::registered;
    l.backoff = options.reconnect_min.count();
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (identity.empty()) identity = new_id;
      balancer_status& s = statuses[l.index];
      s.id = new_id;
      s.registered = true;
      ++s.registrations;
    }
    log(log_level::info, "agent: registered as %s with %s", new_id.c_str(), l.address.c_str());
    // What changed since the register line went, and what register does not carry.
    std::string report;
    if (l.sent_weight != options.weight) report += " weight=" + std::to_string(options.weight);
    if (reported || options.maxconn != 0) report += " maxconn=" + std::to_string(options.maxconn);
    if (reported || options.state != readiness::ready) report += std::string(" state=") + to_string(options.state);
    if (!report.empty()) l.io.write("report" + report + "\n");
    release_waiters();
    if (options.on_registered) options.on_registered(new_id);
  }

  void on_closed(link& l, std::error_code e) {
    if (l.phase == state::closing || l.phase == state::closed) return finish(l);
    log(log_level::warn, "agent: lost the balancer %s%s%s", l.address.c_str(), e ? ": " : "",
        e ? e.message().c_str() : "");
    l.outage = true;  // said: the failed reconnects that follow are not
    drop(l, false);
  }

  // Every ack interval: a ping, and a check that the balancer answered the last ones.
  void on_beat(link& l) {
    if (l.phase != state::waiting && l.phase != state::registering && l.phase != state::registered &&
        l.phase != state::authenticating)
      return;
    std::int64_t now = loop.now();
    if (l.phase == state::waiting) try_register(l, true);
    if (now - l.last_heard > 2 * options.ack.count() + 1000) {
      log(log_level::warn, "agent: no answer from %s, reconnecting", l.address.c_str());
      return drop(l, true);
    }
    if (l.phase == state::authenticating) return loop.schedule(l.beat, now + options.ack.count());  // no ping before auth
    l.io.write("ping\n");
    loop.schedule(l.beat, now + options.ack.count());
  }

  // Ends the link's connection and tries again later; a link that was asking for
  // the identity hands that turn to a waiting one.
  void drop(link& l, bool reset) {
    l.io.close(reset);
    set_registered(l, false);
    bool was_asking = l.asked_without_id;
    l.asked_without_id = false;
    schedule_retry(l);
    if (was_asking) release_waiters();
  }

  void schedule_retry(link& l) {
    l.phase = state::idle;
    loop.cancel(l.beat);
    loop.schedule(l.retry, loop.now() + l.backoff);
    l.backoff = std::min<std::int64_t>(l.backoff * 2, options.reconnect_max.count());
  }

  // close(): every registered link deregisters; the loop stops when all have
  // answered, or after two seconds in all.
  void begin_close() {
    bool waiting = false;
    for (auto& p : links) {
      link& l = *p;
      loop.cancel(l.retry);
      loop.cancel(l.beat);
      if (l.phase == state::registered && l.io.is_open()) {
        l.phase = state::closing;
        l.io.write("close\n");
        waiting = true;
      } else {
        l.io.close();
        l.phase = state::closed;
      }
    }
    if (!waiting) return loop.stop();
    loop.schedule(give_up, loop.now() + 2000);
  }

  void finish(link& l) {
    l.io.close();
    l.phase = state::closed;
    set_registered(l, false);
    for (auto& other : links)
      if (other->phase != state::closed) return;
    loop.stop();
  }

  // set_weight, set_state, set_maxconn: `apply` changes the options (remembered for
  // later registrations) and `line` tells every balancer registered now.
  template <class Apply>
  std::error_code change(Apply apply, std::string line) {
    std::lock_guard<std::mutex> lock(lifecycle);
    if (!running) {
      apply(*this);
      return {};
    }
    loop.post([this, apply, line] {
      apply(*this);
      for (auto& l : links)
        if (l->phase == state::registered) l->io.write(line);
    });
    return {};
  }

  void set_registered(link& l, bool on) {
    std::lock_guard<std::mutex> lock(mutex);
    statuses[l.index].registered = on;
  }
  std::string id() const {
    std::lock_guard<std::mutex> lock(mutex);
    return identity;
  }

  client_options options;
  detail::logger log;
  detail::reactor loop;
  std::vector<std::unique_ptr<link>> links;
  detail::timer give_up;
  std::thread thread;
  bool reported = false;  // set_state or set_maxconn was called: report both after each registration
  mutable std::mutex mutex;  // guards identity and statuses
  std::string identity;
  std::vector<balancer_status> statuses;
  bool running = false;
  std::mutex lifecycle;
};

HARMONY_DEF client::client(client_options options) : impl_(std::make_unique<impl>(std::move(options))) {}

HARMONY_DEF client::~client() { close(); }

HARMONY_DEF std::error_code client::start() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) return make_error_code(errc::already_running);
  if (impl_->loop.stopping()) return make_error_code(errc::shutting_down);  // closed agents stay closed
  const client_options& o = impl_->options;
  if (auto e = check(o)) return e;
  if (auto e = impl_->loop.open()) return e;
  impl* p = impl_.get();
  p->loop.on_error = [p](std::error_code e) { p->log(log_level::error, "agent: event loop: %s", e.message().c_str()); };
  for (auto& owned : p->links) {
    impl::link* l = owned.get();
    l->backoff = o.reconnect_min.count();
    l->io.on_connect = [p, l](std::error_code e) { p->on_connect(*l, e); };
    l->io.on_close = [p, l](std::error_code e) { p->on_closed(*l, e); };
    l->io.on_data = [p, l](std::string_view bytes) {
      if (!l->lines.feed(bytes, [p, l](std::string_view line) { p->on_line(*l, line); })) {
        p->log(log_level::warn, "agent: %s sent a line that is too long", l->address.c_str());
        p->drop(*l, true);
      }
    };
    p->loop.post([p, l] { p->connect_now(*l); });
  }
  p->running = true;
  p->thread = std::thread([p] { p->loop.run(); });
  return {};
}

HARMONY_DEF std::error_code client::close() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return make_error_code(errc::not_running);
  impl* p = impl_.get();
  p->loop.post([p] { p->begin_close(); });
  if (p->thread.get_id() == std::this_thread::get_id()) return {};  // from a callback: cannot wait for itself
  p->thread.join();
  for (auto& l : p->links) l->io.close();
  p->loop.settle();
  p->running = false;
  for (auto& l : p->links) p->set_registered(*l, false);
  return {};
}

HARMONY_DEF std::error_code client::set_weight(int weight) {
  if (weight < min_weight || weight > max_weight) return make_error_code(errc::bad_option);
  return impl_->change([weight](impl& p) { p.options.weight = weight; }, "weight " + std::to_string(weight) + "\n");
}

HARMONY_DEF std::error_code client::set_state(readiness state) {
  if (state != readiness::ready && state != readiness::drain && state != readiness::down)
    return make_error_code(errc::bad_option);
  return impl_->change(
      [state](impl& p) {
        p.options.state = state;
        p.reported = true;
      },
      std::string("report state=") + to_string(state) + "\n");
}

HARMONY_DEF std::error_code client::set_maxconn(int maxconn) {
  if (maxconn < 0 || maxconn > max_maxconn) return make_error_code(errc::bad_option);
  return impl_->change(
      [maxconn](impl& p) {
        p.options.maxconn = maxconn;
        p.reported = true;
      },
      "report maxconn=" + std::to_string(maxconn) + "\n");
}

HARMONY_DEF std::string client::id() const { return impl_->id(); }

HARMONY_DEF bool client::registered() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  for (const balancer_status& s : impl_->statuses)
    if (s.registered) return true;
  return false;
}

HARMONY_DEF std::vector<balancer_status> client::status() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->statuses;
}

}  // namespace harmony
