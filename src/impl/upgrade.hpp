namespace harmony {

// >>upgrade  handing the listening sockets and the registry to a successor process
inline std::error_code server::impl::adopt_listen(std::vector<detail::socket_handle>& out, option_problem* problem) {
#if defined(_WIN32)
  (void)out;
  (void)problem;
  return std::make_error_code(std::errc::not_supported);  // check() refuses inherited sockets first
#else
  std::vector<detail::socket_handle> given;
  for (std::int64_t s : options.inherited.listen) given.push_back(static_cast<detail::socket_handle>(s));
  auto fail = [&](std::error_code e, const std::string& why) {
    for (auto s : given) detail::close_socket(s);
    for (auto s : out)
      if (s != detail::invalid_socket && std::find(given.begin(), given.end(), s) == given.end()) detail::close_socket(s);
    out.clear();
    if (problem) *problem = option_problem{"listen", why + ": " + e.message()};
    return e;
  };
  out.clear();
  for (auto s : given)
    if (std::error_code e = detail::adopt_listener(s)) return fail(e, "cannot take the inherited listener " + std::to_string(s));
  detail::address where;
  if (std::error_code e = detail::local_address(given.front(), where)) return fail(e, "cannot read the inherited listener");
  std::size_t used = detail::listeners_share_port ? static_cast<std::size_t>(options.workers) : 1;
  for (std::size_t i = 0; i < static_cast<std::size_t>(options.workers); ++i) {
    if (i >= used) {
      out.push_back(detail::invalid_socket);  // dealt connections by the first loop
    } else if (i < given.size()) {
      out.push_back(given[i]);
    } else {  // more loops than the process before had: one more listener on the port
      detail::socket_handle s = detail::invalid_socket;
      if (std::error_code e = detail::open_listener(where, true, s))
        return fail(e, "cannot listen beside the inherited listener on " + where.to_endpoint().to_string());
      out.push_back(s);
    }
  }
  for (std::size_t i = used; i < given.size(); ++i) detail::close_socket(given[i]);  // fewer loops than before
  bound_listen = where.to_endpoint();
  log(log_level::info, "took over %zu inherited listener%s on %s", std::min(used, given.size()),
      std::min(used, given.size()) == 1 ? "" : "s", bound_listen.to_string().c_str());
  return {};
#endif
}

HARMONY_DEF std::error_code server::hand_out(inherited_sockets& out) {
#if defined(_WIN32)
  (void)out;
  return std::make_error_code(std::errc::not_supported);
#else
  std::lock_guard<std::mutex> lock(impl_->lifecycle);
  if (!impl_->running) return make_error_code(errc::not_running);
  if (impl_->on_own_thread()) return std::make_error_code(std::errc::resource_deadlock_would_occur);
  {
    std::lock_guard<std::mutex> drain_lock(impl_->drain_mutex);
    if (impl_->draining) return make_error_code(errc::shutting_down);
  }
  // Each loop reads its own listener; the results outlive a wait that gives up.
  struct handed {
    std::mutex mutex;
    std::vector<std::int64_t> listen;
    std::int64_t admin = -1, stats = -1;
    std::error_code error;
  };
  auto got = std::make_shared<handed>();
  got->listen.assign(impl_->workers.size(), -1);
  server::impl* srv = impl_.get();
  bool done = impl_->on_every_loop([got, srv](detail::worker& w, std::size_t i) {
    auto take = [&](detail::socket_handle s, std::int64_t& to) {
      if (s == detail::invalid_socket) return;
      detail::socket_handle copy = detail::invalid_socket;
      std::error_code e = detail::duplicate_for_successor(s, copy);
      std::lock_guard<std::mutex> held(got->mutex);
      if (e) got->error = e;
      else to = copy;
    };
    take(w.listening_socket(), got->listen[i]);
    if (i != 0) return;
    if (srv->admin) take(srv->admin->listening_socket(), got->admin);
    if (srv->stats_port) take(srv->stats_port->listening_socket(), got->stats);
  });
  std::lock_guard<std::mutex> held(got->mutex);
  std::vector<std::int64_t> listen;
  for (std::int64_t s : got->listen)
    if (s >= 0) listen.push_back(s);
  std::error_code e = !done ? std::make_error_code(std::errc::timed_out) : got->error;
  if (!e && listen.empty()) e = make_error_code(errc::shutting_down);  // its listeners are closed
  if (e) {
    for (std::int64_t s : listen) detail::close_socket(static_cast<detail::socket_handle>(s));
    if (got->admin >= 0) detail::close_socket(static_cast<detail::socket_handle>(got->admin));
    if (got->stats >= 0) detail::close_socket(static_cast<detail::socket_handle>(got->stats));
    return e;
  }
  out.listen = std::move(listen);
  out.admin = got->admin;
  out.stats = got->stats;
  return {};
#endif
}

HARMONY_DEF std::error_code server::save_state(const std::string& path) {
  return detail::replace_file(path, impl_->state_text());
}

HARMONY_DEF drain_report server::hand_over(duration deadline) {
  {
    std::lock_guard<std::mutex> lock(impl_->lifecycle);
    if (!impl_->running) return {};
    server::impl* srv = impl_.get();
    if (srv->keeper) {
      srv->backends.lock()->on_change(nullptr);
      srv->keeper->stop(false);
      srv->keeper.reset();
    }
    srv->workers.front()->loop().post([srv] {
      if (srv->admin) srv->admin->hand_over();
      if (srv->stats_port) srv->stats_port->hand_over();
    });
    srv->log(log_level::info, "handing over to the successor: the admin and stats ports are its own now");
  }
  return shutdown(deadline);
}

}  // namespace harmony
