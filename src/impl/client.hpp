namespace harmony {

// >>client-impl  harmony::client
struct client::impl {
  explicit impl(client_options o) : options(std::move(o)), log{options.log, options.level} {
    beat.fire = [this] { on_beat(); };
    retry.fire = [this] { connect_now(); };
    give_up.fire = [this] { loop.stop(); };
  }

  enum class state { idle, connecting, registering, registered, closing };

  void connect_now() {
    endpoint at;
    detail::address to;
    std::error_code e = parse_endpoint(options.balancer, at);
    if (!e) e = detail::resolve(at, to, false);
    if (!e) {
      phase = state::connecting;
      lines = detail::line_splitter{4096};
      e = io.connect(to);
    }
    if (e) {
      log(log_level::warn, "agent: cannot reach %s: %s", options.balancer.c_str(), e.message().c_str());
      schedule_retry();
    }
  }

  void on_connect(std::error_code e) {
    if (e) {
      log(log_level::debug, "agent: connect to %s failed: %s", options.balancer.c_str(), e.message().c_str());
      return schedule_retry();
    }
    phase = state::registering;
    last_heard = loop.now();
    std::string hello = "hello harmony/1\nregister port=" + std::to_string(options.port) +
                        " weight=" + std::to_string(options.weight) +
                        " heartbeat=" + std::to_string(options.ack.count()) + "ms";
    std::string known = id();
    if (!known.empty()) hello += " id=" + known;
    if (!options.host.empty()) hello += " host=" + options.host;
    io.write(hello + "\n");
    loop.schedule(beat, loop.now() + options.ack.count());
  }

  void on_line(std::string_view line) {
    last_heard = loop.now();
    detail::command_line c = detail::parse_command(line);
    if (c.verb == "err") {
      log(log_level::warn, "agent: balancer says: %.*s", static_cast<int>(line.size()), line.data());
      if (phase == state::registering) {
        io.close();
        schedule_retry();
      }
      return;
    }
    std::string_view value;
    if (c.verb == "ok" && phase == state::registering && c.option("id", value)) {
      std::string new_id(value);
      {
        std::lock_guard<std::mutex> lock(mutex);
        my_id = new_id;
        is_registered = true;
      }
      phase = state::registered;
      backoff = options.reconnect_min.count();
      log(log_level::info, "agent: registered as %s with %s", new_id.c_str(), options.balancer.c_str());
      if (options.on_registered) options.on_registered(new_id);
      return;
    }
    if (c.verb == "ok" && phase == state::closing && !c.args.empty() && c.args[0] == "closed") {
      io.close();
      loop.stop();
    }
  }

  void on_closed(std::error_code e) {
    set_registered(false);
    if (phase == state::closing) return loop.stop();
    log(log_level::warn, "agent: lost the balancer %s%s%s", options.balancer.c_str(), e ? ": " : "",
        e ? e.message().c_str() : "");
    schedule_retry();
  }

  // Every ack interval: a ping, and a check that the balancer answered the last ones.
  void on_beat() {
    if (phase != state::registering && phase != state::registered) return;
    std::int64_t now = loop.now();
    if (now - last_heard > 2 * options.ack.count() + 1000) {
      log(log_level::warn, "agent: no answer from %s, reconnecting", options.balancer.c_str());
      io.close(true);
      set_registered(false);
      return schedule_retry();
    }
    io.write("ping\n");
    loop.schedule(beat, now + options.ack.count());
  }

  void schedule_retry() {
    phase = state::idle;
    loop.cancel(beat);
    loop.schedule(retry, loop.now() + backoff);
    backoff = std::min<std::int64_t>(backoff * 2, options.reconnect_max.count());
  }

  void begin_close() {
    loop.cancel(retry);
    loop.cancel(beat);
    if (phase == state::registered && io.is_open()) {
      phase = state::closing;
      io.write("close\n");
      loop.schedule(give_up, loop.now() + 2000);
      return;
    }
    io.close();
    loop.stop();
  }

  void set_registered(bool on) {
    std::lock_guard<std::mutex> lock(mutex);
    is_registered = on;
  }
  std::string id() const {
    std::lock_guard<std::mutex> lock(mutex);
    return my_id;
  }

  client_options options;
  detail::logger log;
  detail::reactor loop;
  detail::stream io{loop};
  detail::line_splitter lines{4096};
  detail::timer beat, retry, give_up;
  std::thread thread;
  state phase = state::idle;
  std::int64_t backoff = 100;
  std::int64_t last_heard = 0;
  mutable std::mutex mutex;
  std::string my_id;
  bool is_registered = false;
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
  p->backoff = o.reconnect_min.count();
  p->io.on_connect = [p](std::error_code e) { p->on_connect(e); };
  p->io.on_close = [p](std::error_code e) { p->on_closed(e); };
  p->io.on_data = [p](std::string_view bytes) {
    if (!p->lines.feed(bytes, [p](std::string_view line) { p->on_line(line); })) {
      p->io.close(true);
      p->on_closed(make_error_code(errc::protocol));
    }
  };
  p->loop.post([p] { p->connect_now(); });
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
  p->io.close();
  p->loop.settle();
  p->running = false;
  p->set_registered(false);
  return {};
}

HARMONY_DEF std::error_code client::set_weight(int weight) {
  if (weight < min_weight || weight > max_weight) return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  impl* p = impl_.get();
  if (!p->running) {
    p->options.weight = weight;
    return {};
  }
  p->loop.post([p, weight] {
    p->options.weight = weight;
    if (p->phase == impl::state::registered) p->io.write("weight " + std::to_string(weight) + "\n");
  });
  return {};
}

HARMONY_DEF std::string client::id() const { return impl_->id(); }

HARMONY_DEF bool client::registered() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->is_registered;
}

}  // namespace harmony
