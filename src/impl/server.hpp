namespace harmony {

// >>server-impl  harmony::server
inline std::error_code server::impl::open() {
  if (auto e = check(options)) return e;
  if (!options.state_file.empty() && !state_loaded) load_state();  // before agents can ack
  {
    std::lock_guard<std::mutex> lock(drain_mutex);
    draining = false;
  }
  drain_watch.store(false, std::memory_order_relaxed);
  drain_timer.fire = [this] { finish_drain("at the deadline"); };
  endpoint at;
  if (auto e = parse_endpoint(options.listen, at)) return e;
  detail::address where;
  if (auto e = detail::resolve(at, where, true)) return e;
  std::vector<detail::socket_handle> listeners;
  for (int i = 0; i < options.workers; ++i) {
    detail::socket_handle s = detail::invalid_socket;
    if (i > 0 && !detail::listeners_share_port) {  // one listener: the first worker deals out what it accepts
      listeners.push_back(s);
      continue;
    }
    std::error_code e = detail::open_listener(where, options.workers > 1, s);
    if (!e && i == 0) {
      // With port 0 every further worker must join the port the first one got.
      detail::address bound;
      detail::local_address(s, bound);
      where.set_port(bound.port());
      bound_listen = bound.to_endpoint();
    }
    if (e) {
      for (auto l : listeners)
        if (l != detail::invalid_socket) detail::close_socket(l);
      return e;
    }
    listeners.push_back(s);
  }
  for (auto s : listeners) {
    workers.push_back(std::make_unique<detail::worker>(*this, options, log));
    if (auto e = workers.back()->open(s)) {
      workers.clear();
      return e;
    }
  }
  if (!options.admin.empty()) {
    endpoint admin_at;
    detail::address admin_where;
    std::error_code e = parse_endpoint(options.admin, admin_at);
    if (!e) e = detail::resolve(admin_at, admin_where, true);
    if (!e) {
      admin = std::make_unique<detail::admin_server>(*this, workers.front()->loop());
      e = admin->open(admin_where, bound_admin);
    }
    if (e) {
      admin.reset();
      workers.clear();
      return e;
    }
    log(log_level::info, "admin port on %s", bound_admin.to_string().c_str());
  }
  log(log_level::info, "listening on %s (%s, %d worker%s)", bound_listen.to_string().c_str(),
      to_string(options.balance), options.workers, options.workers > 1 ? "s" : "");
  if (!names.empty()) start_resolver();
  if (!options.state_file.empty()) start_keeper();
  return {};
}

// The resolver's results are applied on the first loop, one name at a time.
inline void server::impl::start_resolver() {
  detail::reactor* loop = &workers.front()->loop();
  resolver = std::make_unique<detail::resolver>(options.resolve_interval, detail::lookup_all,
                                                [this, loop](detail::resolution r) {
                                                  loop->post([this, r = std::move(r)] { apply(r); });
                                                });
  resolver->start(names);
}

inline std::error_code server::impl::add_name(std::string_view address, int weight) {
  endpoint at;
  if (auto e = parse_endpoint(address, at)) return e;
  if (at.port == 0 || !detail::registry::valid_weight(weight)) return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(lifecycle);
  names.push_back(detail::resolver_name{at, weight});
  if (resolver) resolver->add(names.back());
  else if (running) start_resolver();
  return {};
}

inline void server::impl::apply(const detail::resolution& r) {
  if (discoveries.size() <= r.index) discoveries.resize(r.index + 1);
  detail::discovery& d = discoveries[r.index];
  std::string name = r.name.at.to_string();
  detail::discovery::outcome o;
  if (r.error) {
    o = d.failed();
    if (o.news)
      log(log_level::warn, "%s does not resolve (%s): keeping its %zu backends", name.c_str(), r.error.message().c_str(),
          d.live());
  } else {
    std::vector<detail::discovered_address> fresh;
    for (const auto& a : r.addresses) fresh.push_back(detail::discovered_address{a, r.name.weight});
    o = d.resolved(fresh);
    if (o.news) log(log_level::info, "%s resolves again", name.c_str());
  }
  using kind = detail::discovery::change::kind;
  std::vector<std::string> notes;
  {
    auto table = backends.lock();
    std::int64_t now = detail::now_ms();
    for (const auto& c : o.changes) {
      std::string at = detail::to_os_address(c.to).to_endpoint().to_string();
      switch (c.what) {
        case kind::add: {
          std::string id;
          std::error_code e = table->add(detail::to_os_address(c.to).to_endpoint(), &c.to, c.weight, false, &id, now);
          if (!e) {
            table->set_source(id, name);
            d.bind(c.to, id);
            notes.push_back("backend " + at + " from " + name + " added, id " + id);
          } else {
            notes.push_back("backend " + at + " from " + name + " not added: " + e.message());
          }
          break;
        }
        case kind::drain:
          table->drain(c.id, true, now);
          notes.push_back("backend " + at + " is gone from " + name + ": draining");
          break;
        case kind::restore:
          table->drain(c.id, false, now);
          notes.push_back("backend " + at + " is back in " + name);
          break;
        case kind::reweight: table->set_weight(c.id, c.weight); break;
        case kind::remove: break;
      }
    }
    for (const auto& c : d.sweep([&](std::string_view id) { return table->active_of(id); })) {
      table->remove(c.id);
      notes.push_back("backend " + detail::to_os_address(c.to).to_endpoint().to_string() + " from " + name +
                      " removed: its connections have ended");
    }
  }
  for (const auto& n : notes) log(log_level::info, "%s", n.c_str());
}

inline void server::impl::stop_resolver() {
  if (resolver && !resolver->stop(detail::resolver_stop_wait))
    log(log_level::warn, "a name lookup is still running: its thread is left to end on its own");
  resolver.reset();
}

inline void server::impl::close_all() {
  finish_drain("cut short by stop()");  // when one is going on
  stop_resolver();  // before the loops it delivers to go
  for (auto& w : workers) w->loop().stop();
  for (auto& t : threads)
    if (t.joinable()) t.join();
  threads.clear();
  if (!workers.empty()) workers.front()->loop().cancel(drain_timer);  // its thread has ended
  admin.reset();
  workers.clear();
  if (keeper) {  // the loops are gone: the last state is final
    backends.lock()->on_change(nullptr);
    keeper->stop();
    keeper.reset();
  }
  bound_listen = endpoint{};
  bound_admin = endpoint{};
  running = false;
}

HARMONY_DEF server::server(server_options options) : impl_(std::make_unique<impl>(std::move(options))) {}

HARMONY_DEF server::~server() { stop(); }

HARMONY_DEF std::error_code server::start() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) return make_error_code(errc::already_running);
  if (auto e = impl_->open()) return e;
  impl_->running = true;
  impl_->caller_runs_loop = false;
  for (auto& w : impl_->workers) impl_->threads.emplace_back(&detail::worker::run_own_thread, w.get());
  return {};
}

HARMONY_DEF std::error_code server::run() {
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (impl_->running) return make_error_code(errc::already_running);
    if (auto e = impl_->open()) return e;
    impl_->running = true;
    impl_->caller_runs_loop = true;
    for (std::size_t i = 1; i < impl_->workers.size(); ++i)
      impl_->threads.emplace_back(&detail::worker::run_own_thread, impl_->workers[i].get());
    impl_->run_thread = std::this_thread::get_id();
  }
  impl_->workers.front()->loop().run();
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  impl_->close_all();
  return {};
}

HARMONY_DEF void server::stop() {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return;
  for (auto& w : impl_->workers) w->loop().stop();
  if (impl_->caller_runs_loop) return;  // run() cleans up when its loop returns
  for (auto& t : impl_->threads)
    if (t.get_id() == std::this_thread::get_id()) return;  // from a callback: the destructor joins
  impl_->close_all();
}

HARMONY_DEF drain_report server::shutdown() { return shutdown(impl_->options.drain_timeout); }

HARMONY_DEF drain_report server::shutdown(duration deadline) {
  std::uint64_t round;
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (!impl_->running) return {};
    {
      std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
      round = impl_->drain_round;
    }
    impl_->begin_drain(deadline);
    if (impl_->on_own_thread()) {  // a callback cannot wait for its own loop
      std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
      return impl_->drain;
    }
  }
  drain_report report;
  {
    std::unique_lock<std::mutex> lock(impl_->drain_mutex);
    // The first loop's timer ends the drain at the deadline; the bound here only keeps a
    // loop that cannot run its timer from holding the caller for ever.
    auto bound = std::chrono::steady_clock::now() + std::max(deadline, duration{0}) + std::chrono::seconds(5);
    impl_->drain_over.wait_until(lock, bound, [&] { return impl_->drain_round != round; });
    report = impl_->drain;
  }
  stop();  // joins the threads (in run(), the thread running it cleans up)
  return report;
}

inline std::uint64_t server::impl::open_connections() const {
  std::uint64_t n = 0;
  for (auto& w : workers) n += w->stats.active.load(std::memory_order_relaxed);
  return n;
}

inline bool server::impl::on_own_thread() const {
  auto me = std::this_thread::get_id();
  if (caller_runs_loop && me == run_thread) return true;
  for (auto& t : threads)
    if (t.get_id() == me) return true;
  return false;
}

inline void server::impl::begin_drain(duration deadline) {
  std::int64_t now = detail::now_ms();
  std::int64_t until = now + std::max<std::int64_t>(0, deadline.count());
  {
    std::lock_guard<std::mutex> lock(drain_mutex);
    if (draining) {
      if (until >= drain_deadline) return;
      drain_deadline = until;  // hurried: the timer moves up
    } else {
      draining = true;
      drain_began = now;
      drain_deadline = until;
      drain = drain_report{};
      drain.open = open_connections();
      accepted_at_drain = 0;
      for (auto& w : workers) accepted_at_drain += w->stats.accepted.load(std::memory_order_relaxed);
      log(log_level::info, "draining: the listen port is closed, %llu connection%s open, waiting up to %s",
          static_cast<unsigned long long>(drain.open), drain.open == 1 ? "" : "s", format_duration(deadline).c_str());
      drain_watch.store(true, std::memory_order_relaxed);
      for (auto& w : workers) {
        detail::worker* target = w.get();
        target->loop().post([target] { target->stop_accepting(); });
      }
    }
  }
  detail::reactor& first = workers.front()->loop();
  first.post([this, &first, until] {
    drain_check();  // none open: done at once
    if (!drain_watch.load(std::memory_order_relaxed)) return;
    first.schedule(drain_timer, until);
  });
}

inline void server::impl::drain_check() {
  if (open_connections() == 0) finish_drain("");
}

inline void server::impl::finish_drain(const char* how) {
  std::lock_guard<std::mutex> lock(drain_mutex);
  if (!draining || !drain_watch.load(std::memory_order_relaxed)) return;
  drain_watch.store(false, std::memory_order_relaxed);
  std::uint64_t accepted = 0;
  for (auto& w : workers) accepted += w->stats.accepted.load(std::memory_order_relaxed);
  drain.cut = open_connections();  // closed when the loops go
  std::uint64_t served = drain.open + (accepted - accepted_at_drain);
  drain.finished = served > drain.cut ? served - drain.cut : 0;
  std::string took = format_duration(duration{detail::now_ms() - drain_began});
  if (drain.cut == 0)
    log(log_level::info, "drained in %s: %llu connection%s finished, none cut", took.c_str(),
        static_cast<unsigned long long>(drain.finished), drain.finished == 1 ? "" : "s");
  else
    log(log_level::warn, "drain ended %s after %s: %llu connection%s finished, %llu cut", how, took.c_str(),
        static_cast<unsigned long long>(drain.finished), drain.finished == 1 ? "" : "s",
        static_cast<unsigned long long>(drain.cut));
  ++drain_round;
  drain_over.notify_all();
  for (auto& w : workers) w->loop().stop();
}

inline void server::impl::load_state() {
  state_loaded = true;
  const std::string& path = options.state_file;
  std::string text;
  std::error_code e = detail::read_file(path, text, detail::max_state_file_bytes);
  if (e == std::errc::no_such_file_or_directory) {
    log(log_level::info, "state file %s does not exist yet: no backend to restore", path.c_str());
    return;
  }
  if (e) {
    log(log_level::error, "cannot read the state file %s (%s): starting without its backends", path.c_str(),
        e.message().c_str());
    return;
  }
  detail::parsed_state parsed = detail::parse_state(text);
  for (const auto& p : parsed.problems) {
    if (p.line) log(log_level::warn, "state file %s line %zu: %s (skipped)", path.c_str(), p.line, p.what.c_str());
    else log(log_level::warn, "state file %s: %s", path.c_str(), p.what.c_str());
  }
  std::size_t restored = 0;
  std::int64_t now = detail::now_ms(), unix_now = detail::unix_ms();
  for (const auto& r : parsed.records) {
    detail::resolved_address to;
    if (r.port != 0 && detail::resolve(endpoint{r.addr, r.port}, to)) {
      log(log_level::warn, "state file %s: backend %s: '%s' is not an address (skipped)", path.c_str(), r.id.c_str(),
          r.addr.c_str());
      continue;
    }
    if (auto re = backends.lock()->restore(r, r.port ? &to : nullptr, now, unix_now)) {
      log(log_level::warn, "state file %s: backend %s not restored: %s", path.c_str(), r.id.c_str(),
          re.message().c_str());
      continue;
    }
    ++restored;
  }
  log(log_level::info, "state file %s: %zu backend%s restored%s", path.c_str(), restored, restored == 1 ? "" : "s",
      parsed.complete ? "" : " (the file is incomplete)");
}

inline std::string server::impl::state_text() {
  std::vector<detail::kept_backend> kept = backends.lock()->keep(detail::now_ms(), detail::unix_ms());
  std::vector<detail::state_record> records;
  records.reserve(kept.size());
  for (auto& k : kept) {
    if (k.to.valid()) k.record.addr = detail::to_os_address(k.to).host_text();
    records.push_back(std::move(k.record));
  }
  return detail::format_state(records);
}

inline void server::impl::start_keeper() {
  keeper = std::make_unique<detail::state_keeper>(options.state_file, [this] { return state_text(); }, log);
  detail::state_keeper* k = keeper.get();
  backends.lock()->on_change([k] { k->changed(); });
  keeper->start();
}

HARMONY_DEF endpoint server::listen_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_listen;
}

HARMONY_DEF endpoint server::admin_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_admin;
}

HARMONY_DEF std::error_code server::add_backend(std::string_view address, int weight, std::string* id_out) {
  return impl_->add_static(address, weight, id_out);
}

HARMONY_DEF std::error_code server::add_backend(std::string_view address, const backend_options& options,
                                                std::string* id_out) {
  return impl_->add_static(address, options, id_out);
}

inline std::error_code server::impl::add_static(std::string_view address, const backend_options& options,
                                                std::string* id_out) {
  endpoint at;
  if (auto e = parse_endpoint(address, at)) return e;
  if (at.port == 0) return make_error_code(errc::bad_option);  // the registry judges the weight
  if (options.maxconn < 0 || options.maxconn > max_maxconn) return make_error_code(errc::bad_option);
  detail::resolved_address to;
  if (auto e = detail::resolve(at, to)) return e;
  std::string id;
  auto r = backends.lock();
  if (auto e = r->add(at, &to, options.weight, false, &id, detail::now_ms())) return e;
  r->set_maxconn(id, options.maxconn);
  r->set_backup(id, options.backup);
  if (id_out) *id_out = id;
  return {};
}

HARMONY_DEF std::error_code server::add_backend_name(std::string_view address, int weight) {
  return impl_->add_name(address, weight);
}

HARMONY_DEF std::error_code server::remove_backend(std::string_view id) { return impl_->backends.lock()->remove(id); }

HARMONY_DEF std::error_code server::set_weight(std::string_view id, int weight) {
  return impl_->backends.lock()->set_weight(id, weight);
}

HARMONY_DEF std::error_code server::drain(std::string_view id, bool on) {
  return impl_->backends.lock()->drain(id, on, detail::now_ms());
}

HARMONY_DEF std::error_code server::set_concurrency(int limit) {
  if (limit < min_concurrency || limit > max_concurrency) return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) impl_->apply_concurrency(limit);
  else impl_->concurrency.store(limit, std::memory_order_relaxed);
  return {};
}

HARMONY_DEF std::vector<backend_info> server::backends() const { return impl_->backends.lock()->list(detail::now_ms()); }

HARMONY_DEF server_stats server::stats() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->collect_stats();
}

inline server_stats server::impl::collect_stats() const {
  server_stats s;
  for (auto& w : workers) {
    s.accepted += w->stats.accepted.load(std::memory_order_relaxed);
    s.active += w->stats.active.load(std::memory_order_relaxed);
    s.unavailable += w->stats.unavailable.load(std::memory_order_relaxed);
    s.connect_failures += w->stats.connect_failures.load(std::memory_order_relaxed);
    s.bytes_in += w->stats.bytes_in.load(std::memory_order_relaxed);
    s.bytes_out += w->stats.bytes_out.load(std::memory_order_relaxed);
    s.bytes_spliced += w->stats.bytes_spliced.load(std::memory_order_relaxed);
  }
  s.queued = static_cast<std::uint64_t>(waiting.load(std::memory_order_relaxed));
  return s;
}

}  // namespace harmony
