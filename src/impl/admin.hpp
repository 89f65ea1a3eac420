namespace harmony {
namespace detail {

// >>admin  the admin port: legacy (harmony.js) and native dialects
// The admin port. Each connection first shows its dialect: harmony.js agents
// speak the legacy token protocol; everything else is the native line protocol
// (agents, and operators typing with nc). It runs on the first worker's loop.
class admin_server;

class admin_connection {
 public:
  admin_connection(admin_server& owner, reactor& loop) : io(loop), owner_(owner), loop_(loop) {
    clock_.fire = [this] { on_clock(); };
  }
  ~admin_connection() { loop_.cancel(clock_); }
  admin_connection(const admin_connection&) = delete;
  admin_connection& operator=(const admin_connection&) = delete;
  void start(socket_handle fd, const address& peer);
  // Ends the connection; `why` is logged. `graceful` sends the queued replies
  // first. Safe to call from inside its own callbacks.
  void end(const char* why, bool graceful = false);

  stream io;

 private:
  void on_data(std::string_view bytes);
  void on_clock();
  void apply(const admin_effect& e);
  std::int64_t idle_limit() const;

  admin_server& owner_;
  reactor& loop_;
  timer clock_;
  address peer_;
  std::unique_ptr<admin_protocol> protocol_;  // what the bytes mean (>>commands)
  std::int64_t last_heard_ = 0;
  bool ended_ = false;
};

// What admin commands reach of the server, besides its registry.
class admin_server_services final : public admin_services {
 public:
  explicit admin_server_services(server::impl& srv) : srv_(srv) {}
  server_stats stats() override { return srv_.collect_stats(); }
  int concurrency() override { return srv_.concurrency.load(); }
  std::error_code resolve(const endpoint& at, resolved_address& out) override { return detail::resolve(at, out); }
  std::error_code add_static(std::string_view address, int weight, std::string* id_out) override {
    return srv_.add_static(address, weight, id_out);
  }

 private:
  server::impl& srv_;
};

class admin_server {
 public:
  admin_server(server::impl& srv, reactor& loop)
      : srv_(srv), loop_(loop), listener_(loop, srv.log), services_(srv), connections_(loop) {
    listener_.on_accept = [this](socket_handle fd, const address& peer) { adopt(fd, peer); };
    sweep_.fire = [this] { sweep(); };
  }
  ~admin_server() {
    connections_.close_all();
    listener_.close();
    loop_.cancel(sweep_);
    // The connections' streams and the accepts are memory the kernel may still write.
    loop_.settle();
  }
  admin_server(const admin_server&) = delete;
  admin_server& operator=(const admin_server&) = delete;

  std::error_code open(const address& at, endpoint& bound) {
    socket_handle s = invalid_socket;
    if (auto e = open_listener(at, false, s)) return e;
    return take(s, bound);
  }
  // A listener bound already (inherited from the process before).
  std::error_code take(socket_handle s, endpoint& bound) {
    address local;
    local_address(s, local);
    bound = local.to_endpoint();
    loop_.schedule(sweep_, loop_.now() + 1000);
    return listener_.open(s);
  }
  // server::hand_over, on this loop: the successor takes the port; the agents, whose
  // connections end here, register with it.
  void hand_over() {
    listener_.close();
    connections_.each([](admin_connection& c) { c.end("handed over to the successor"); });
  }

  server::impl& srv() noexcept { return srv_; }
  reactor& loop() noexcept { return loop_; }
  socket_handle listening_socket() const noexcept { return listener_.socket(); }  // on this loop
  admin_services& services() noexcept { return services_; }

  // The live native connection of each agent's backend.
  std::unordered_map<std::string, admin_connection*> agents;
  // Backends whose agent dropped: forgotten when they stay away a host timeout.
  std::unordered_map<std::string, std::int64_t> offline_since;

  void release(admin_connection* c) { connections_.release(c); }

 private:
  void adopt(socket_handle fd, const address& peer);
  void sweep();

  server::impl& srv_;
  reactor& loop_;
  acceptor listener_;
  admin_server_services services_;
  timer sweep_;
  log_gate refused_log_;
  stream_set<admin_connection> connections_;
};



inline void admin_server::adopt(socket_handle fd, const address& peer) {
  if (connections_.size() >= srv_.options.max_admin_connections) {
    std::uint64_t held = 0;
    if (refused_log_.pass(loop_.now(), held))
      srv_.log(log_level::warn, "admin connection from %s refused: %zu connections open (--max-admin-connections)%s",
               peer.to_endpoint().to_string().c_str(), connections_.size(),
               held ? (", " + std::to_string(held) + " more since the last such line").c_str() : "");
    close_socket(fd);
    return;
  }
  connections_.add(*this, loop_)->start(fd, peer);
}

inline void admin_server::sweep() {
  std::int64_t now = loop_.now();
  std::int64_t keep = srv_.options.host_timeout.count();
  for (auto it = offline_since.begin(); it != offline_since.end();) {
    if (now - it->second > keep) {
      srv_.log(log_level::debug, "backend %s forgotten: its agent stayed away", it->first.c_str());
      srv_.backends.lock()->remove(it->first, "its agent stayed away a host timeout");
      it = offline_since.erase(it);
    } else {
      ++it;
    }
  }
  loop_.schedule(sweep_, now + 1000);
}

inline void admin_connection::start(socket_handle fd, const address& peer) {
  peer_ = peer;
  admin_protocol::config c;
  const server_options& o = owner_.srv().options;
  resolved_address from = to_resolved(peer);
  c.secret = o.admin_secret;
  c.refuse_legacy = !o.admin_secret.empty() && !in_any_cidr(o.allow_legacy, from);
  c.max_line = o.max_admin_line;
  c.host_timeout_ms = o.host_timeout.count();
  protocol_ = std::make_unique<admin_protocol>(from, peer.host_text(), std::move(c));
  last_heard_ = loop_.now();
  io.on_data = [this](std::string_view bytes) { on_data(bytes); };
  io.on_close = [this](std::error_code e) { end(e ? "connection error" : "closed by peer"); };
  if (std::error_code e = io.attach(fd)) {
    owner_.srv().log(log_level::error, "cannot watch the admin connection from %s: %s",
                     peer.to_endpoint().to_string().c_str(), e.message().c_str());
    return end("cannot watch the connection");
  }
  loop_.schedule(clock_, last_heard_ + idle_limit());
}

inline std::int64_t admin_connection::idle_limit() const {
  // A registered agent must be heard every heartbeat; three missed is death.
  if (protocol_->agent() && protocol_->heartbeat_ms() > 0)
    return std::max<std::int64_t>(3 * protocol_->heartbeat_ms(), 1000);
  return owner_.srv().options.admin_timeout.count();
}

inline void admin_connection::on_clock() {
  if (ended_) {
    io.close();
    return owner_.release(this);
  }
  std::int64_t deadline = last_heard_ + idle_limit();
  if (loop_.now() >= deadline) return end(protocol_->agent() ? "agent heartbeat lost" : "idle");
  loop_.schedule(clock_, deadline);
}

inline void admin_connection::end(const char* why, bool graceful) {
  if (ended_) return;
  ended_ = true;
  server::impl& srv = owner_.srv();
  srv.log(log_level::debug, "admin connection from %s ends: %s", peer_.to_endpoint().to_string().c_str(), why);
  if (protocol_->agent()) {
    const std::string& id = protocol_->bound_id();
    auto it = owner_.agents.find(id);
    if (it != owner_.agents.end() && it->second == this) {
      owner_.agents.erase(it);
      if (!srv.backends.lock()->set_online(id, false, loop_.now())) {
        owner_.offline_since[id] = loop_.now();
        srv.log(log_level::debug, "backend %s offline: %s", id.c_str(), why);
      }
    }
  }
  if (graceful && io.is_open()) {
    io.on_close = [this](std::error_code) { owner_.release(this); };
    io.finish();
    if (io.is_open()) return loop_.schedule(clock_, loop_.now() + 5000);  // bounded wait
  }
  loop_.cancel(clock_);
  io.close();
  owner_.release(this);
}

// The bytes go to the protocol; its reply goes out and its effects are applied.
inline void admin_connection::on_data(std::string_view bytes) {
  if (ended_) return;
  server::impl& srv = owner_.srv();
  admin_context ctx{srv.backends, owner_.services(), srv.log, loop_.now()};
  admin_result r = protocol_->feed(bytes, ctx);
  // Heard is a whole message answered, not a byte: a peer that trickles a line
  // without its end (slowloris) is still closed by the admin timeout.
  if (!r.replies.empty() || !r.effects.empty()) last_heard_ = loop_.now();
  for (const std::string& reply : r.replies) io.write(reply);
  for (const admin_effect& e : r.effects) {
    if (ended_) break;
    apply(e);
  }
}

inline void admin_connection::apply(const admin_effect& e) {
  switch (e.what) {
    case admin_effect::kind::end: return end(e.why, e.graceful);
    case admin_effect::kind::bind_agent: {
      if (!e.previous.empty()) {
        auto it = owner_.agents.find(e.previous);
        if (it != owner_.agents.end() && it->second == this) owner_.agents.erase(it);
      }
      owner_.agents[e.id] = this;  // a newer connection takes over from a stale one
      owner_.offline_since.erase(e.id);
      return loop_.schedule(clock_, last_heard_ + idle_limit());
    }
    case admin_effect::kind::unbind_agent: owner_.agents.erase(e.id); return;
    case admin_effect::kind::set_concurrency: return owner_.srv().apply_concurrency(e.limit);
  }
}

}  // namespace detail
}  // namespace harmony
