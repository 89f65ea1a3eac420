namespace harmony {

// >>server-impl  harmony::server
// Opens a port beside the listen port (admin, stats) on the first loop; on a
// failure `port` stays empty and `problem` names the option and the address.
// `inherited`: the port's listener from the process before (-1: none), taken instead.
template <class Port>
std::error_code open_side_port(server::impl& srv, const char* option, const std::string& text, std::int64_t inherited,
                               std::unique_ptr<Port>& port, endpoint& bound, option_problem* problem) {
  endpoint at;
  detail::address where;
  std::error_code e = parse_endpoint(text, at);
#if !defined(_WIN32)  // check() refuses inherited sockets elsewhere
  if (!e && inherited >= 0) {
    auto s = static_cast<detail::socket_handle>(inherited);
    e = detail::adopt_listener(s);
    if (!e) {
      port = std::make_unique<Port>(srv, srv.workers.front()->loop());
      e = port->take(s, bound);
    } else {
      detail::close_socket(s);
    }
    if (e) {
      port.reset();
      if (problem) *problem = option_problem{option, "cannot take the inherited listener: " + e.message()};
    }
    return e;
  }
#endif
  (void)inherited;
  if (!e) e = detail::resolve(at, where, true);
  if (!e) {
    port = std::make_unique<Port>(srv, srv.workers.front()->loop());
    e = port->open(where, bound);
  }
  if (e) {
    port.reset();
    if (problem) *problem = option_problem{option, "cannot listen on " + at.to_string() + ": " + e.message()};
  }
  return e;
}

inline std::error_code server::impl::open(option_problem* problem) {
  if (auto e = check(options, problem)) return e;
  connection_limit.store(options.max_connections ? options.max_connections
                                                 : derived_max_connections(detail::descriptor_limit(), options.max_admin_connections),
                         std::memory_order_relaxed);
  per_client_limit.store(options.max_conns_per_client, std::memory_order_relaxed);
  clients.store(0, std::memory_order_relaxed);
  accept_paused.store(false, std::memory_order_relaxed);
  winding_down.store(false, std::memory_order_relaxed);
  if (!state_loaded) {  // before agents can ack
    if (!options.restore_from.empty()) load_state(options.restore_from);
    else if (!options.state_file.empty()) load_state(options.state_file);
  }
  {
    std::lock_guard<std::mutex> lock(drain_mutex);
    draining = false;
  }
  drain_watch.store(false, std::memory_order_relaxed);
  drain_timer.fire = [this] { finish_drain("at the deadline"); };
  std::vector<detail::socket_handle> listeners;
  if (auto e = options.inherited.listen.empty() ? bind_listen(options.listen, listeners, bound_listen, problem)
                                                 : adopt_listen(listeners, problem))
    return e;
  for (auto s : listeners) {
    workers.push_back(std::make_unique<detail::worker>(*this, options, log));
    if (auto e = workers.back()->open(s)) {
      workers.clear();
      return e;
    }
  }
  monitor = std::make_unique<detail::health_monitor>(*this, workers.front()->loop());
  monitor->start();
#if !defined(_WIN32)
  // Inherited ports this configuration has no use for.
  if (options.admin.empty() && options.inherited.admin >= 0)
    detail::close_socket(static_cast<detail::socket_handle>(options.inherited.admin));
  if (options.stats.empty() && options.inherited.stats >= 0)
    detail::close_socket(static_cast<detail::socket_handle>(options.inherited.stats));
#endif
  if (!options.admin.empty()) {
    if (auto e = open_side_port(*this, "admin", options.admin, options.inherited.admin, admin, bound_admin, problem)) {
      monitor.reset();
      workers.clear();
      return e;
    }
    log(log_level::info, "admin port on %s", bound_admin.to_string().c_str());
  }
  if (!options.stats.empty()) {
    if (auto e = open_side_port(*this, "stats", options.stats, options.inherited.stats, stats_port, bound_stats, problem)) {
      admin.reset();
      monitor.reset();
      workers.clear();
      return e;
    }
    log(log_level::info, "stats on http://%s/ (/metrics, /status.json)", bound_stats.to_string().c_str());
  }
  started_ms = detail::now_ms();
  log(log_level::info, "listening on %s (%s, %d worker%s, at most %zu connections)", bound_listen.to_string().c_str(),
      to_string(options.balance), options.workers, options.workers > 1 ? "s" : "",
      connection_limit.load(std::memory_order_relaxed));
  detail::reactor* first = &workers.front()->loop();
  backends.lock()->on_tables_stale([this, first] { first->post([this] { rebuild_tables(); }); });
  rebuild_tables();
  if (!names.empty()) start_resolver();
  if (!options.state_file.empty()) start_keeper();
  options.inherited = inherited_sockets{};  // taken: a later start() binds afresh
  return {};
}

inline std::error_code server::impl::bind_listen(const std::string& text, std::vector<detail::socket_handle>& out,
                                                endpoint& bound_at, option_problem* problem) {
  endpoint at;
  if (auto e = parse_endpoint(text, at)) return e;
  detail::address where;
  if (auto e = detail::resolve(at, where, true)) {
    if (problem) *problem = option_problem{"listen", "cannot resolve " + at.to_string() + ": " + e.message()};
    return e;
  }
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
      bound_at = bound.to_endpoint();
    }
    if (e) {
      for (auto l : listeners)
        if (l != detail::invalid_socket) detail::close_socket(l);
      if (problem) *problem = option_problem{"listen", "cannot listen on " + at.to_string() + ": " + e.message()};
      return e;
    }
    listeners.push_back(s);
  }
  out = std::move(listeners);
  return {};
}

// The resolver's results are applied on the first loop, one name at a time.
inline void server::impl::start_resolver() {
  detail::reactor* loop = &workers.front()->loop();
  std::vector<endpoint> servers;
  for (const std::string& text : options.nameservers) {
    servers.emplace_back();
    detail::parse_nameserver(text, servers.back());  // check() has judged them
  }
  auto lookup = [servers](const detail::resolver_name& name, std::vector<detail::discovered_address>& out) {
    return detail::lookup_name(name, servers, out);
  };
  resolver = std::make_unique<detail::resolver>(options.resolve_interval, lookup,
                                                [this, loop](detail::resolution r) {
                                                  loop->post([this, r = std::move(r)] { apply(r); });
                                                });
  resolver->start(names);
}

inline std::error_code server::impl::add_name(std::string_view address, const backend_options& options) {
  endpoint at;
  bool srv = detail::is_srv_name(address);
  if (srv) at.host = detail::dns_canonical(address);
  else if (auto e = parse_endpoint(address, at)) return e;
  if ((!srv && at.port == 0) || !detail::registry::valid_weight(options.weight) || options.maxconn < 0 ||
      options.maxconn > max_maxconn)
    return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(lifecycle);
  names.push_back(detail::resolver_name{at, options.weight, srv, options.maxconn, options.backup, options.proxy});
  if (resolver) resolver->add(names.back());
  else if (running) start_resolver();
  return {};
}

inline void server::impl::apply(const detail::resolution& r) {
  if (discoveries.size() <= r.index) discoveries.resize(r.index + 1);
  detail::discovery& d = discoveries[r.index];
  std::string name = r.name.srv ? r.name.at.host : r.name.at.to_string();
  detail::discovery::outcome o;
  if (r.error) {
    o = d.failed();
    if (o.news)
      log(log_level::warn, "%s does not resolve (%s): keeping its %zu backends", name.c_str(), r.error.message().c_str(),
          d.live());
  } else {
    o = d.resolved(r.addresses);
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
            if (c.backup) table->set_backup(id, true);
            if (r.name.maxconn) table->set_maxconn(id, r.name.maxconn);
            table->set_proxy(id, r.name.proxy);
            d.bind(c.to, id);
          } else {
            notes.push_back("backend " + at + " from " + name + " not added: " + e.message());
          }
          break;
        }
        case kind::drain:
          table->drain(c.id, true, now, "gone from " + name);
          break;
        case kind::restore:
          table->drain(c.id, false, now, "back in " + name);
          break;
        case kind::reweight:
          table->set_weight(c.id, c.weight);
          table->set_backup(c.id, c.backup);
          notes.push_back("backend " + at + " from " + name + " now weight " + std::to_string(c.weight) +
                          (c.backup ? ", backup" : ""));
          break;
        case kind::remove: break;
      }
    }
    for (const auto& c : d.sweep([&](std::string_view id) { return table->active_of(id); })) {
      table->remove(c.id, "gone from " + name + ", its connections have ended");
    }
  }
  rebuild_tables();  // on this loop now, rather than after the task it posted
  for (const auto& n : notes) log(log_level::info, "%s", n.c_str());
}

inline void server::impl::stop_resolver() {
  if (resolver && !resolver->stop(detail::resolver_stop_wait))
    log(log_level::warn, "a name lookup is still running: its thread is left to end on its own");
  resolver.reset();
}

// Builds the stale Maglev tables without the registry's lock, so that picks on
// every loop go on (with the tables before the change) while one is built. A
// change on a loop (an admin command, an expiry a pick finds) posts it to the
// first loop; a change through the API or the resolver runs it at once.
inline void server::impl::rebuild_tables() {
  for (detail::registry::table_job& job : backends.lock()->take_table_jobs()) {
    detail::maglev_table table = job.build();
    backends.lock()->install_table(job.which, job.generation, std::move(table));
  }
}

inline void server::impl::close_all() {
  winding_down.store(true, std::memory_order_relaxed);
  finish_drain("cut short by stop()");  // when one is going on
  stop_resolver();  // before the loops it delivers to go
  backends.lock()->on_tables_stale(nullptr);  // picks rebuild them from now on, should any come
  for (auto& w : workers) w->loop().stop();
  for (auto& t : threads)
    if (t.joinable()) t.join();
  threads.clear();
  if (!workers.empty()) workers.front()->loop().cancel(drain_timer);  // its thread has ended
  admin.reset();
  stats_port.reset();
  monitor.reset();
  workers.clear();
  if (keeper) {  // the loops are gone: the last state is final
    backends.lock()->on_change(nullptr);
    keeper->stop();
    keeper.reset();
  }
  bound_listen = endpoint{};
  bound_admin = endpoint{};
  bound_stats = endpoint{};
  running = false;
}

HARMONY_DEF server::server(server_options options) : impl_(std::make_unique<impl>(std::move(options))) {}

HARMONY_DEF server::~server() { stop(); }

HARMONY_DEF std::error_code server::start(option_problem* problem) {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) return make_error_code(errc::already_running);
  if (auto e = impl_->open(problem)) return e;
  impl_->running = true;
  impl_->caller_runs_loop = false;
  for (auto& w : impl_->workers) impl_->threads.emplace_back(&detail::worker::run_own_thread, w.get());
  return {};
}

HARMONY_DEF std::error_code server::run(option_problem* problem) {
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (impl_->running) return make_error_code(errc::already_running);
    if (auto e = impl_->open(problem)) return e;
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

HARMONY_DEF drain_report server::shutdown() {
  duration deadline;
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);  // reconfigure may change it
    deadline = impl_->options.drain_timeout;
  }
  return shutdown(deadline);
}

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

inline void server::impl::load_state(const std::string& path) {
  state_loaded = true;
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

HARMONY_DEF endpoint server::stats_endpoint() const {
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  return impl_->bound_stats;
}

inline detail::stats_snapshot server::impl::snapshot() {
  detail::stats_snapshot s;
  s.totals = collect_stats();  // the loops' counters are atomics: no lock needed on this loop
  std::int64_t now = detail::now_ms();
  s.backends = backends.lock()->list(now);
  s.uptime_ms = now - started_ms;
  s.open_descriptors = detail::count_open_descriptors();
  s.algorithm = to_string(options.balance);
  s.version = std::to_string(HARMONY_VERSION_MAJOR) + "." + std::to_string(HARMONY_VERSION_MINOR) + "." +
              std::to_string(HARMONY_VERSION_PATCH);
  return s;
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
  {
    auto r = backends.lock();
    if (auto e = r->add(at, &to, options.weight, false, &id, detail::now_ms())) return e;
    r->set_maxconn(id, options.maxconn);
    r->set_backup(id, options.backup);
    r->set_proxy(id, options.proxy);
  }
  rebuild_tables();
  if (id_out) *id_out = id;
  return {};
}

HARMONY_DEF std::error_code server::add_backend_name(std::string_view address, int weight) {
  backend_options o;
  o.weight = weight;
  return impl_->add_name(address, o);
}

HARMONY_DEF std::error_code server::add_backend_name(std::string_view address, const backend_options& options) {
  return impl_->add_name(address, options);
}

// A change through the API rebuilds what it made stale before it returns, on the
// caller's thread: the next connection sees it, and no loop pays for it.
HARMONY_DEF std::error_code server::remove_backend(std::string_view id) {
  std::error_code e = impl_->backends.lock()->remove(id);
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::set_weight(std::string_view id, int weight) {
  std::error_code e = impl_->backends.lock()->set_weight(id, weight);
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::drain(std::string_view id, bool on) {
  std::error_code e = impl_->backends.lock()->drain(id, on, detail::now_ms());
  impl_->rebuild_tables();
  return e;
}

HARMONY_DEF std::error_code server::set_concurrency(int limit) {
  if (limit < min_concurrency || limit > max_concurrency) return make_error_code(errc::bad_option);
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (impl_->running) impl_->apply_concurrency(limit);
  else impl_->concurrency.store(limit, std::memory_order_relaxed);
  return {};
}

HARMONY_DEF std::string format_access_entry(const access_entry& e, std::int64_t unix_ms) {
  auto text = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
  std::string tried;
  for (const std::string& t : e.tried) tried += (tried.empty() ? "" : ",") + t;
  std::string reason = "\"";
  for (char c : e.reason) {  // one line whatever the text: quotes and control bytes escaped
    if (c == '"' || c == '\\') reason += '\\';
    if (static_cast<unsigned char>(c) < ' ') c = ' ';
    reason += c;
  }
  reason += '"';
  return "time=" + detail::iso8601_utc(unix_ms) + " client=" + text(e.client) + " via=" + text(e.via) +
         " backend=" + text(e.backend) + " tried=" + text(tried) + " bytes_in=" + std::to_string(e.bytes_in) +
         " bytes_out=" + std::to_string(e.bytes_out) + " queue_ms=" + std::to_string(e.queued.count()) +
         " duration_ms=" + std::to_string(e.lasted.count()) + " end=" + (*e.end ? e.end : "-") +
         " reason=" + reason;
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
    s.bad_proxy_headers += w->stats.bad_proxy_headers.load(std::memory_order_relaxed);
  }
  s.queued = static_cast<std::uint64_t>(waiting.load(std::memory_order_relaxed));
  s.refused = refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace harmony
