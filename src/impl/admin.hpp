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
  void legacy_message(std::string_view command, std::string_view argument);
  void native_line(std::string_view line);
  void reply(std::string_view text) { io.write(text); }
  void reply_error(std::string_view code, std::string_view message);
  void command_register(const command_line& c);
  void bind_agent(const std::string& id);
  std::int64_t idle_limit() const;

  admin_server& owner_;
  reactor& loop_;
  timer clock_;
  address peer_;
  dialect dialect_ = dialect::undecided;
  std::string first_bytes_;
  legacy_parser legacy_;
  line_splitter lines_{4096};
  std::string bound_id_;       // the backend this connection speaks for
  std::string closed_id_;      // deregistered on this connection (legacy CLOSE)
  bool agent_ = false;         // a native agent: its connection is its liveness
  std::int64_t heartbeat_ms_ = 0;
  std::int64_t last_heard_ = 0;
  bool ended_ = false;
};

class admin_server {
 public:
  admin_server(server::impl& srv, reactor& loop) : srv_(srv), loop_(loop), listener_(loop, srv.log) {
    listener_.on_accept = [this](socket_handle fd, const address& peer) { adopt(fd, peer); };
    sweep_.fire = [this] { sweep(); };
  }
  ~admin_server() {
    for (auto& c : connections_) c.second->io.close();
    listener_.close();
    loop_.cancel(sweep_);
#if defined(HARMONY_USE_IOCP)
    // The connections' streams and the accepts are memory the kernel may still write.
    loop_.settle();
#endif
  }
  admin_server(const admin_server&) = delete;
  admin_server& operator=(const admin_server&) = delete;

  std::error_code open(const address& at, endpoint& bound) {
    socket_handle s = invalid_socket;
    if (auto e = open_listener(at, false, s)) return e;
    address local;
    local_address(s, local);
    bound = local.to_endpoint();
    loop_.schedule(sweep_, loop_.now() + 1000);
    return listener_.open(s);
  }

  server::impl& srv() noexcept { return srv_; }
  reactor& loop() noexcept { return loop_; }

  // The live native connection of each agent's backend.
  std::unordered_map<std::string, admin_connection*> agents;
  // Backends whose agent dropped: forgotten when they stay away a host timeout.
  std::unordered_map<std::string, std::int64_t> offline_since;

  void release(admin_connection* c) {
    loop_.retire(&c->io, [this, c] { connections_.erase(c); });
  }

 private:
  void adopt(socket_handle fd, const address& peer);
  void sweep();

  server::impl& srv_;
  reactor& loop_;
  acceptor listener_;
  timer sweep_;
  std::unordered_map<admin_connection*, std::unique_ptr<admin_connection>> connections_;
};



inline void admin_server::adopt(socket_handle fd, const address& peer) {
  if (connections_.size() >= srv_.options.max_admin_connections) {
    srv_.log(log_level::warn, "admin connection from %s refused: %zu connections open",
             peer.to_endpoint().to_string().c_str(), connections_.size());
    close_socket(fd);
    return;
  }
  auto c = std::make_unique<admin_connection>(*this, loop_);
  admin_connection* raw = c.get();
  connections_.emplace(raw, std::move(c));
  raw->start(fd, peer);
}

inline void admin_server::sweep() {
  std::int64_t now = loop_.now();
  std::int64_t keep = srv_.options.host_timeout.count();
  for (auto it = offline_since.begin(); it != offline_since.end();) {
    if (now - it->second > keep) {
      srv_.log(log_level::info, "backend %s forgotten: its agent stayed away", it->first.c_str());
      srv_.backends.lock()->remove(it->first);
      it = offline_since.erase(it);
    } else {
      ++it;
    }
  }
  loop_.schedule(sweep_, now + 1000);
}

inline void admin_connection::start(socket_handle fd, const address& peer) {
  peer_ = peer;
  last_heard_ = loop_.now();
  io.on_data = [this](std::string_view bytes) { on_data(bytes); };
  io.on_close = [this](std::error_code e) { end(e ? "connection error" : "closed by peer"); };
  io.attach(fd);
  loop_.schedule(clock_, last_heard_ + idle_limit());
}

inline std::int64_t admin_connection::idle_limit() const {
  // A registered agent must be heard every heartbeat; three missed is death.
  if (agent_ && heartbeat_ms_ > 0) return std::max<std::int64_t>(3 * heartbeat_ms_, 1000);
  return owner_.srv().options.admin_timeout.count();
}

inline void admin_connection::on_clock() {
  if (ended_) {
    io.close();
    return owner_.release(this);
  }
  std::int64_t deadline = last_heard_ + idle_limit();
  if (loop_.now() >= deadline) return end(agent_ ? "agent heartbeat lost" : "idle");
  loop_.schedule(clock_, deadline);
}

inline void admin_connection::end(const char* why, bool graceful) {
  if (ended_) return;
  ended_ = true;
  server::impl& srv = owner_.srv();
  srv.log(log_level::debug, "admin connection from %s ends: %s", peer_.to_endpoint().to_string().c_str(), why);
  if (agent_) {
    auto it = owner_.agents.find(bound_id_);
    if (it != owner_.agents.end() && it->second == this) {
      owner_.agents.erase(it);
      if (!srv.backends.lock()->set_online(bound_id_, false, loop_.now())) {
        owner_.offline_since[bound_id_] = loop_.now();
        srv.log(log_level::warn, "backend %s offline: %s", bound_id_.c_str(), why);
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

inline void admin_connection::on_data(std::string_view bytes) {
  if (ended_) return;
  last_heard_ = loop_.now();
  std::string held;
  if (dialect_ == dialect::undecided) {
    first_bytes_.append(bytes.data(), bytes.size());
    dialect_ = detect_dialect(first_bytes_);
    if (dialect_ == dialect::undecided) {
      if (first_bytes_.size() < 16) return;
      dialect_ = dialect::native;
    }
    held.swap(first_bytes_);
    bytes = held;
    if (dialect_ == dialect::legacy && !owner_.srv().options.admin_secret.empty() &&
        !owner_.srv().options.allow_legacy) {
      owner_.srv().log(log_level::warn, "legacy agent from %s refused: a secret is set",
                       peer_.to_endpoint().to_string().c_str());
      return end("legacy dialect refused");
    }
  }
  if (dialect_ == dialect::legacy) {
    bool ok = legacy_.feed(bytes, [this](std::string_view command, std::string_view argument) {
      if (!ended_) legacy_message(command, argument);
    });
    if (!ok && !ended_) {
      owner_.srv().log(log_level::warn, "malformed legacy message from %s", peer_.to_endpoint().to_string().c_str());
      end("malformed legacy message");
    }
    return;
  }
  bool ok = lines_.feed(bytes, [this](std::string_view line) {
    if (!ended_) native_line(line);
  });
  if (!ok && !ended_) {
    reply_error("line-too-long", "lines are limited to 4096 bytes");
    end("line too long", true);
  }
}

inline void admin_connection::legacy_message(std::string_view command, std::string_view argument) {
  server::impl& srv = owner_.srv();
  std::int64_t now = loop_.now();
  std::string echo;
  echo.reserve(command.size() + argument.size() + 2);
  echo.append(command.data(), command.size()).append(":").append(argument.data(), argument.size()).append(":");
  if (command == "BYE") return end("BYE", true);
  if (command == "NID") {
    // The backend lives at this connection's peer address; SPORT gives its port.
    endpoint at{peer_.host_text(), 0};
    std::string id;
    resolved_address from = to_resolved(peer_);
    if (auto e = srv.backends.lock()->add(at, &from, default_weight, true, &id, now)) {
      srv.log(log_level::warn, "legacy registration from %s refused: %s", at.host.c_str(), e.message().c_str());
      return end("registration refused");
    }
    bound_id_ = id;
    srv.log(log_level::info, "backend %s registered from %s (legacy)", id.c_str(), at.host.c_str());
    return reply("NID:" + id + ":");
  }
  if (command == "ID") {
    std::string id(argument);
    // harmony.js's close() sends CLOSE then ID for the same id on one connection
    // and expects both echoed.
    if (id == closed_id_) return reply(echo);
    if (!srv.backends.lock()->known(id)) return reply("BID:" + id + ":");
    bound_id_ = id;
    return reply(echo);
  }
  if (command == "BAL") {
    if (!bound_id_.empty()) srv.backends.lock()->set_weight(bound_id_, legacy_weight(argument));
    return reply(echo);
  }
  if (command == "SPORT") {
    std::uint64_t port = 0;
    endpoint at;
    if (!bound_id_.empty() && parse_uint(argument, 65535, port) && srv.backends.lock()->address_of(bound_id_, at)) {
      at.port = static_cast<std::uint16_t>(port);
      srv.backends.lock()->set_address(bound_id_, at, to_resolved(peer_).with_port(at.port), now);
      srv.backends.lock()->ack(bound_id_, now);
    }
    return reply(echo);
  }
  if (command == "ACK") {
    srv.backends.lock()->ack(argument, now);  // an unknown id is answered all the same
    return reply(echo);
  }
  if (command == "CLOSE") {
    if (!srv.backends.lock()->remove(argument)) {
      srv.log(log_level::info, "backend %.*s closed", static_cast<int>(argument.size()), argument.data());
      closed_id_.assign(argument.data(), argument.size());
      if (bound_id_ == closed_id_) bound_id_.clear();
    }
    return reply(echo);
  }
}

inline void admin_connection::reply_error(std::string_view code, std::string_view message) {
  std::string line = "err ";
  line.append(code.data(), code.size()).append(" ").append(message.data(), message.size()).append("\n");
  reply(line);
}

inline std::string weight_range_text() {
  return "weight must be a number from " + std::to_string(min_weight) + " to " + std::to_string(max_weight);
}

namespace native_help {
constexpr const char* text =
    "# harmony/1 admin commands (one per line; replies end with 'ok ...' or 'err CODE MESSAGE')\n"
    "# hello [harmony/1]                      protocol version\n"
    "# register port=P [id=ID] [host=H] [weight=W] [heartbeat=DUR]   agent: join or rejoin\n"
    "# ping                                   agent heartbeat (answer: pong)\n"
    "# weight W                               agent: change its own weight\n"
    "# close                                  agent: deregister now\n"
    "# list                                   backends with state, weight, connections\n"
    "# stats                                  balancer counters\n"
    "# add HOST:PORT [weight=W]               add a static backend\n"
    "# remove ID | set-weight ID W | drain ID | undrain ID\n"
    "# concurrency [N]                        show or set the concurrency limit\n"
    "# quit\n";
}

inline void admin_connection::native_line(std::string_view line) {
  server::impl& srv = owner_.srv();
  std::int64_t now = loop_.now();
  command_line c = parse_command(line);
  if (c.verb.empty() || c.verb.front() == '#') return;
  auto need_args = [&](std::size_t n, const char* usage) {
    if (c.args.size() == n) return true;
    reply_error("usage", usage);
    return false;
  };
  auto answer = [&](std::error_code e, const std::string& ok_text) {
    if (!e) return reply(ok_text.empty() ? "ok\n" : "ok " + ok_text + "\n");
    const char* code = e == errc::unknown_backend ? "unknown-backend" : e == errc::bad_option ? "bad-argument" : "failed";
    reply_error(code, e.message());
  };
  auto parse_weight = [&](std::string_view text, int& w) {
    if (!harmony::parse_weight(text, w)) return true;
    reply_error("bad-argument", weight_range_text());
    return false;
  };

  if (c.verb == "hello") {
    return reply("ok harmony/1 harmonyd/" + std::to_string(HARMONY_VERSION_MAJOR) + "." +
                 std::to_string(HARMONY_VERSION_MINOR) + "." + std::to_string(HARMONY_VERSION_PATCH) + " auth=none\n");
  }
  if (c.verb == "ping") {
    if (agent_) srv.backends.lock()->ack(bound_id_, now);
    return reply("pong\n");
  }
  if (c.verb == "register") return command_register(c);
  if (c.verb == "weight") {
    int w = 0;
    if (!need_args(1, "weight W") || !parse_weight(c.args[0], w)) return;
    if (bound_id_.empty()) return reply_error("not-registered", "register first");
    return answer(srv.backends.lock()->set_weight(bound_id_, w), "weight=" + std::to_string(w));
  }
  if (c.verb == "close") {
    if (bound_id_.empty()) return reply_error("not-registered", "register first");
    std::string id = bound_id_;
    owner_.agents.erase(id);
    agent_ = false;
    bound_id_.clear();
    srv.log(log_level::info, "backend %s deregistered", id.c_str());
    return answer(srv.backends.lock()->remove(id), "closed id=" + id);
  }
  if (c.verb == "list") {
    auto list = srv.backends.lock()->list(now);
    std::string out;
    for (const auto& b : list)
      out += "backend id=" + b.id + " address=" + b.address.to_string() + " weight=" + std::to_string(b.weight) +
             " active=" + std::to_string(b.active) + " total=" + std::to_string(b.total) +
             " failures=" + std::to_string(b.failures) + " state=" + b.state + "\n";
    out += "ok backends=" + std::to_string(list.size()) + "\n";
    return reply(out);
  }
  if (c.verb == "stats") {
    server_stats s = srv.collect_stats();
    return reply("ok accepted=" + std::to_string(s.accepted) + " active=" + std::to_string(s.active) +
                 " queued=" + std::to_string(s.queued) + " unavailable=" + std::to_string(s.unavailable) +
                 " connect_failures=" + std::to_string(s.connect_failures) + " bytes_in=" +
                 std::to_string(s.bytes_in) + " bytes_out=" + std::to_string(s.bytes_out) +
                 " bytes_spliced=" + std::to_string(s.bytes_spliced) + " backends=" + std::to_string(srv.backends.lock()->size()) +
                 " concurrency=" + std::to_string(srv.concurrency.load()) + "\n");
  }
  if (c.verb == "add") {
    if (!need_args(1, "add HOST:PORT [weight=W]")) return;
    int w = 500;
    std::string_view wtext;
    if (c.option("weight", wtext) && !parse_weight(wtext, w)) return;
    std::string id;
    std::error_code e = srv.add_static(c.args[0], w, &id);
    if (e == errc::bad_address || e == errc::resolve_failed) return reply_error("bad-argument", e.message());
    return answer(e, "id=" + id);
  }
  if (c.verb == "remove") {
    if (!need_args(1, "remove ID")) return;
    return answer(srv.backends.lock()->remove(c.args[0]), "");
  }
  if (c.verb == "set-weight") {
    int w = 0;
    if (!need_args(2, "set-weight ID W") || !parse_weight(c.args[1], w)) return;
    return answer(srv.backends.lock()->set_weight(c.args[0], w), "weight=" + std::to_string(w));
  }
  if (c.verb == "drain" || c.verb == "undrain") {
    if (!need_args(1, "drain ID | undrain ID")) return;
    return answer(srv.backends.lock()->drain(c.args[0], c.verb == "drain", now), "");
  }
  if (c.verb == "concurrency") {
    if (c.args.empty()) return reply("ok concurrency=" + std::to_string(srv.concurrency.load()) + "\n");
    std::uint64_t v = 0;
    int limit = -1;
    if (c.args[0] != "-1") {
      if (!parse_uint(c.args[0], 1000000000, v)) return reply_error("bad-argument", "concurrency is -1, 0 or N");
      limit = static_cast<int>(v);
    }
    srv.apply_concurrency(limit);
    return reply("ok concurrency=" + std::to_string(limit) + "\n");
  }
  if (c.verb == "help") return reply(std::string(native_help::text) + "ok\n");
  if (c.verb == "quit" || c.verb == "bye") {
    reply("ok bye\n");
    return end("quit", true);
  }
  std::string verb(c.verb.substr(0, 64));
  reply_error("unknown-command", "'" + verb + "' (try 'help')");
}

inline void admin_connection::command_register(const command_line& c) {
  server::impl& srv = owner_.srv();
  std::int64_t now = loop_.now();
  std::string_view text;
  std::uint64_t port = 0;
  if (!c.option("port", text) || !parse_uint(text, 65535, port) || port == 0)
    return reply_error("bad-argument", "register needs port=1..65535");
  int weight = default_weight;
  if (c.option("weight", text) && parse_weight(text, weight)) return reply_error("bad-argument", weight_range_text());
  std::int64_t heartbeat = 0;
  if (c.option("heartbeat", text)) {
    duration d{};
    if (parse_duration(text, d) || d.count() <= 0) return reply_error("bad-argument", "heartbeat is a duration, e.g. 20s");
    heartbeat = d.count();
  }
  endpoint at{peer_.host_text(), static_cast<std::uint16_t>(port)};
  resolved_address to = to_resolved(peer_).with_port(at.port);
  if (c.option("host", text)) {
    at.host.assign(text.data(), text.size());
    if (at.host.empty() || resolve(at, to)) return reply_error("bad-argument", "cannot resolve host");
  }
  std::string id;
  if (c.option("id", text)) id.assign(text.data(), text.size());
  if (!id.empty() && srv.backends.lock()->known(id)) {
    srv.backends.lock()->set_address(id, at, to, now);
    srv.backends.lock()->set_weight(id, weight);
    srv.backends.lock()->set_online(id, true, now);
    srv.log(log_level::info, "backend %s re-registered at %s weight %d", id.c_str(), at.to_string().c_str(), weight);
  } else {
    // A balancer that restarted does not know the agent: it rejoins under its old id.
    std::string wanted = id;
    if (auto e = srv.backends.lock()->add(at, &to, weight, true, &id, now, wanted)) {
      reply_error("refused", e.message());
      return;
    }
    srv.log(log_level::info, "backend %s registered at %s weight %d", id.c_str(), at.to_string().c_str(), weight);
  }
  heartbeat_ms_ = heartbeat;
  bind_agent(id);
  reply("ok id=" + id + "\n");
}

inline void admin_connection::bind_agent(const std::string& id) {
  if (agent_ && bound_id_ != id) {
    auto it = owner_.agents.find(bound_id_);
    if (it != owner_.agents.end() && it->second == this) owner_.agents.erase(it);
  }
  bound_id_ = id;
  agent_ = true;
  owner_.agents[id] = this;  // a newer connection takes over from a stale one
  owner_.offline_since.erase(id);
  loop_.schedule(clock_, last_heard_ + idle_limit());
}

}  // namespace detail
}  // namespace harmony
