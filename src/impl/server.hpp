namespace harmony {

// >>server-impl  harmony::server
inline std::error_code server::impl::open(option_problem* problem) {
  if (auto e = check(options, problem)) return e;
  connection_limit = options.max_connections ? options.max_connections
                                             : derived_max_connections(detail::descriptor_limit(), options.max_admin_connections);
  clients.store(0, std::memory_order_relaxed);
  accept_paused.store(false, std::memory_order_relaxed);
  winding_down.store(false, std::memory_order_relaxed);
  endpoint at;
  if (auto e = parse_endpoint(options.listen, at)) return e;
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
      bound_listen = bound.to_endpoint();
    }
    if (e) {
      for (auto l : listeners)
        if (l != detail::invalid_socket) detail::close_socket(l);
      if (problem) *problem = option_problem{"listen", "cannot listen on " + at.to_string() + ": " + e.message()};
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
      if (problem) *problem = option_problem{"admin", "cannot listen on " + admin_at.to_string() + ": " + e.message()};
      return e;
    }
    log(log_level::info, "admin port on %s", bound_admin.to_string().c_str());
  }
  log(log_level::info, "listening on %s (%s, %d worker%s, at most %zu connections)", bound_listen.to_string().c_str(),
      to_string(options.balance), options.workers, options.workers > 1 ? "s" : "", connection_limit);
  if (!names.empty()) start_resolver();
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
  winding_down.store(true, std::memory_order_relaxed);
  stop_resolver();  // before the loops it delivers to go
  for (auto& w : workers) w->loop().stop();
  for (auto& t : threads)
    if (t.joinable()) t.join();
  threads.clear();
  admin.reset();
  workers.clear();
  bound_listen = endpoint{};
  bound_admin = endpoint{};
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
  s.refused = refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace harmony
