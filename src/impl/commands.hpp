namespace harmony {
namespace detail {

// >>commands  sans-IO admin command handling, both dialects: bytes in, reply and effects out
// What an admin connection means, apart from moving its bytes. admin_protocol
// holds one connection's protocol state (dialect, parsers, the backend it speaks
// for, whether it is an agent and its heartbeat, who the peer is) and turns the
// bytes read into the bytes to write plus a few effects for the I/O layer
// (>>admin) to apply. It changes the registry itself, under its lock, and
// reaches the rest of the balancer only through admin_services.

// What commands need of the balancer beyond the registry. The server implements
// it; tests implement it with plain values.
class admin_services {
 public:
  virtual server_stats stats() = 0;  // `stats`
  virtual int concurrency() = 0;     // `stats`, `concurrency`
  // Resolves `register host=H` (may block: it runs on the admin loop, as before).
  virtual std::error_code resolve(const endpoint& at, resolved_address& out) = 0;
  // `add HOST:PORT [weight=W]`: a static backend, as server::add_backend.
  virtual std::error_code add_static(std::string_view address, int weight, std::string* id_out) = 0;
  // Fills `out` with unpredictable bytes (the nonce of `hello` when a secret is set).
  virtual bool random(void* out, std::size_t n) { return random_bytes(out, n); }

 protected:
  ~admin_services() = default;
};

// What a command does beyond its reply; the I/O layer applies these in order,
// after queueing the reply.
struct admin_effect {
  enum class kind {
    end,              // end the connection, after the reply is sent when `graceful`; `why` is logged
    bind_agent,       // this connection is now the live connection of agent `id`; `previous`,
                      // when not empty, is the agent it spoke for before
    unbind_agent,     // agent `id` deregistered itself: forget its connection
    set_concurrency,  // apply `limit` as the concurrency limit
  };
  kind what = kind::end;
  std::string id;
  std::string previous;
  int limit = 0;
  bool graceful = false;
  const char* why = "";
};

struct admin_result {
  // The replies, in order, one write each: one per message answered, as the
  // balancer always wrote them (a harmony.js agent reads what it gets as it comes).
  std::vector<std::string> replies;
  std::vector<admin_effect> effects;  // in order, after the replies

  // All the reply bytes as one string.
  std::string text() const {
    std::string all;
    for (const std::string& r : replies) all += r;
    return all;
  }
};

// Everything a command reads or changes besides the connection's own state.
struct admin_context {
  locked<registry>& backends;
  admin_services& services;
  const logger& log;
  std::int64_t now;
};

// The admin handshake of a balancer with a secret (docs/admin-protocol.md): `hello`
// answers with a fresh nonce (32 bytes of the OS CSPRNG, 64 hex digits), the peer
// answers `auth PROOF`, PROOF being this in hex. The context string ties a proof to
// this protocol and its purpose; the nonce ties it to one connection and one try.
inline std::string admin_auth_proof(std::string_view secret, std::string_view nonce) {
  std::string message = "harmony/1 auth ";
  message.append(nonce.data(), nonce.size());
  return to_hex(hmac_sha256(secret, message));
}

// Who may say what on one native connection, apart from parsing: with a secret, only
// the handshake (and help, quit) before `auth` succeeds; an agent's connection (one
// that registered its backend) changes only that backend.
enum class admin_access { allowed, needs_auth, agent_forbidden };
inline admin_access admin_permission(std::string_view verb, bool authenticated, bool agent) noexcept {
  bool handshake = verb == "hello" || verb == "auth" || verb == "help" || verb == "quit" || verb == "bye";
  if (!authenticated && !handshake) return admin_access::needs_auth;
  // The operator commands that change the balancer or another backend.
  bool steers = verb == "add" || verb == "remove" || verb == "set-weight" || verb == "drain" || verb == "undrain" ||
                verb == "concurrency";
  if (agent && steers) return admin_access::agent_forbidden;
  return admin_access::allowed;
}

class admin_protocol {
 public:
  struct config {
    bool refuse_legacy = false;  // a secret is set and the legacy dialect is not allowed
    std::size_t max_line = default_max_admin_line;  // server_options::max_admin_line
    std::int64_t host_timeout_ms = 0;  // an agent whose heartbeat is longer is told; 0: not checked
    std::string secret;          // server_options::admin_secret; empty: no handshake
  };

  // `peer`: the address the connection comes from; `peer_host`: its host as text.
  admin_protocol(resolved_address peer, std::string peer_host, config c)
      : config_(std::move(c)),
        peer_(peer),
        peer_host_(std::move(peer_host)),
        lines_(config_.max_line),
        authenticated_(config_.secret.empty()) {}
  admin_protocol(resolved_address peer, std::string peer_host) : admin_protocol(peer, std::move(peer_host), config{}) {}

  // Bytes read from the connection: tells the dialect from the first bytes, splits
  // them into messages or lines and answers each. After an `end` effect the rest
  // of the input, now and later, is ignored.
  admin_result feed(std::string_view bytes, admin_context& ctx) {
    admin_result out;
    if (ended_) return out;
    std::string held;
    if (dialect_ == dialect::undecided) {
      first_bytes_.append(bytes.data(), bytes.size());
      dialect_ = detect_dialect(first_bytes_);
      if (dialect_ == dialect::undecided) {
        if (first_bytes_.size() < 16) return out;
        dialect_ = dialect::native;
      }
      held.swap(first_bytes_);
      bytes = held;
      if (dialect_ == dialect::legacy && config_.refuse_legacy) {
        ctx.log(log_level::warn, "legacy agent from %s refused: a secret is set and it is not in allow_legacy",
                peer_name().c_str());
        // Not a harmony.js reply (there is none for this): a line for whoever looks at the bytes.
        append(out, "ERR:the legacy dialect is refused here (the admin port needs a secret):");
        end(out, "legacy dialect refused", true);
        return out;
      }
    }
    if (dialect_ == dialect::legacy) {
      bool ok = legacy_.feed(bytes, [&](std::string_view command, std::string_view argument) {
        if (!ended_) legacy_message(command, argument, ctx, out);
      });
      if (!ok && !ended_) {
        if (legacy_.too_long()) {
          // The legacy dialect has no error reply: the log says why, the close ends it.
          ctx.log(log_level::warn, "legacy message from %s refused: a token is longer than %zu bytes; closing",
                  peer_name().c_str(), legacy_parser::max_token);
          end(out, "token too long", false);
        } else {
          ctx.log(log_level::warn, "malformed legacy message from %s", peer_name().c_str());
          end(out, "malformed legacy message", false);
        }
      }
      return out;
    }
    bool ok = lines_.feed(bytes, [&](std::string_view line) {
      if (!ended_) native_line(line, ctx, out);
    });
    if (!ok && !ended_) {
      ctx.log(log_level::warn, "admin line from %s refused: longer than %zu bytes; closing", peer_name().c_str(),
              config_.max_line);
      error(out, "line-too-long", "lines are limited to " + std::to_string(config_.max_line) + " bytes");
      end(out, "line too long", true);
    }
    return out;
  }

  // One harmony.js message. Every reply but BID and NID echoes the request byte
  // for byte: the agent matches replies as text.
  void legacy_message(std::string_view command, std::string_view argument, admin_context& ctx, admin_result& out) {
    std::string echo;
    echo.reserve(command.size() + argument.size() + 2);
    echo.append(command.data(), command.size()).append(":").append(argument.data(), argument.size()).append(":");
    if (command == "BYE") return end(out, "BYE", true);
    if (command == "NID") {
      // The backend lives at this connection's peer address; SPORT gives its port.
      endpoint at{peer_host_, 0};
      std::string id;
      if (auto e = ctx.backends.lock()->add(at, &peer_, default_weight, true, &id, ctx.now)) {
        ctx.log(log_level::warn, "legacy registration from %s refused: %s", at.host.c_str(), e.message().c_str());
        return end(out, "registration refused", false);
      }
      bound_id_ = id;
      ctx.log(log_level::debug, "backend %s registered from %s (legacy)", id.c_str(), at.host.c_str());
      return append(out, "NID:" + id + ":");
    }
    if (command == "ID") {
      std::string id(argument);
      // harmony.js's close() sends CLOSE then ID for the same id on one connection
      // and expects both echoed.
      if (id == closed_id_) return append(out, echo);
      if (!ctx.backends.lock()->known(id)) return append(out, "BID:" + id + ":");
      bound_id_ = id;
      return append(out, echo);
    }
    if (command == "BAL") {
      if (!bound_id_.empty()) ctx.backends.lock()->set_weight(bound_id_, legacy_weight(argument));
      return append(out, echo);
    }
    if (command == "SPORT") {
      std::uint64_t port = 0;
      endpoint at;
      if (!bound_id_.empty() && parse_uint(argument, 65535, port)) {
        auto r = ctx.backends.lock();
        if (r->address_of(bound_id_, at)) {
          at.port = static_cast<std::uint16_t>(port);
          r->set_address(bound_id_, at, peer_.with_port(at.port), ctx.now);
          r->ack(bound_id_, ctx.now);
        }
      }
      return append(out, echo);
    }
    if (command == "ACK") {
      std::int64_t silent = -1, limit = 0;
      {
        auto r = ctx.backends.lock();
        silent = r->silent_for(argument, ctx.now);
        limit = r->host_timeout_ms();
        r->ack(argument, ctx.now);  // an unknown id is answered all the same
      }
      // The legacy dialect cannot tell the agent; the log says why the backend flaps.
      if (silent > limit)
        ctx.log(log_level::warn,
                "backend %.*s acked %s after its last ack, longer than the host timeout %s: it expires between acks "
                "(its agent's ack interval must be at most half the host timeout)",
                static_cast<int>(argument.size()), argument.data(), format_duration(duration(silent)).c_str(),
                format_duration(duration(limit)).c_str());
      return append(out, echo);
    }
    if (command == "CLOSE") {
      if (!ctx.backends.lock()->remove(argument, "its agent closed it")) {
        ctx.log(log_level::debug, "backend %.*s closed", static_cast<int>(argument.size()), argument.data());
        closed_id_.assign(argument.data(), argument.size());
        if (bound_id_ == closed_id_) bound_id_.clear();
      }
      return append(out, echo);
    }
  }

  // One harmony/1 line.
  void native_line(std::string_view line, admin_context& ctx, admin_result& out) {
    command_line c = parse_command(line);
    if (c.verb.empty() || c.verb.front() == '#') return;
    switch (admin_permission(c.verb, authenticated_, agent_)) {
      case admin_access::allowed: break;
      case admin_access::needs_auth:
        ctx.log(log_level::warn, "admin connection from %s closed: '%.*s' before authentication", peer_name().c_str(),
                static_cast<int>(std::min<std::size_t>(c.verb.size(), 64)), c.verb.data());
        error(out, "auth-required", "a secret is set: send 'hello', then 'auth PROOF' for its nonce");
        return end(out, "not authenticated", true);
      case admin_access::agent_forbidden:
        return error(out, "forbidden", "an agent's connection changes only its own backend");
    }
    auto need_args = [&](std::size_t n, const char* usage) {
      if (c.args.size() == n) return true;
      error(out, "usage", usage);
      return false;
    };
    auto answer = [&](std::error_code e, const std::string& ok_text) {
      if (!e) return append(out, ok_text.empty() ? "ok\n" : "ok " + ok_text + "\n");
      const char* code =
          e == errc::unknown_backend ? "unknown-backend" : e == errc::bad_option ? "bad-argument" : "failed";
      error(out, code, e.message());
    };
    auto weight_of = [&](std::string_view text, int& w) {
      if (!parse_weight(text, w)) return true;
      error(out, "bad-argument", weight_range());
      return false;
    };

    if (c.verb == "hello") {
      std::string hello = "ok harmony/1 harmonyd/" + std::to_string(HARMONY_VERSION_MAJOR) + "." +
                          std::to_string(HARMONY_VERSION_MINOR) + "." + std::to_string(HARMONY_VERSION_PATCH);
      if (config_.secret.empty()) return append(out, hello + " auth=none\n");
      if (authenticated_) return append(out, hello + " auth=hmac-sha256 authenticated\n");
      // A fresh nonce for each hello; the one before it is gone.
      std::uint8_t bytes[32];
      if (!ctx.services.random(bytes, sizeof bytes)) {
        nonce_.clear();
        ctx.log(log_level::error, "no random bytes for the admin nonce of %s", peer_name().c_str());
        error(out, "failed", "no random bytes");
        return end(out, "no random bytes", true);
      }
      nonce_ = to_hex(bytes, sizeof bytes);
      return append(out, hello + " auth=hmac-sha256 nonce=" + nonce_ + "\n");
    }
    if (c.verb == "auth") return command_auth(c, ctx, out);
    if (c.verb == "ping") {
      if (agent_) ctx.backends.lock()->ack(bound_id_, ctx.now);
      return append(out, "pong\n");
    }
    if (c.verb == "register") return command_register(c, ctx, out);
    if (c.verb == "weight") {
      int w = 0;
      if (!need_args(1, "weight W") || !weight_of(c.args[0], w)) return;
      if (bound_id_.empty()) return error(out, "not-registered", "register first");
      return answer(ctx.backends.lock()->set_weight(bound_id_, w), "weight=" + std::to_string(w));
    }
    if (c.verb == "report") return command_report(c, ctx, out);
    if (c.verb == "close") {
      if (bound_id_.empty()) return error(out, "not-registered", "register first");
      std::string id = bound_id_;
      admin_effect unbind;
      unbind.what = admin_effect::kind::unbind_agent;
      unbind.id = id;
      out.effects.push_back(std::move(unbind));
      agent_ = false;
      bound_id_.clear();
      ctx.log(log_level::debug, "backend %s deregistered", id.c_str());
      return answer(ctx.backends.lock()->remove(id, "its agent deregistered"), "closed id=" + id);
    }
    if (c.verb == "list") {
      auto list = ctx.backends.lock()->list(ctx.now);
      std::string text;
      for (const auto& b : list)
        text += "backend id=" + b.id + " address=" + b.address.to_string() + " weight=" + std::to_string(b.weight) +
                " active=" + std::to_string(b.active) + " total=" + std::to_string(b.total) +
                " failures=" + std::to_string(b.failures) + " state=" + b.state +
                " maxconn=" + std::to_string(b.maxconn) + " backup=" + (b.backup ? "yes" : "no") +
                (b.proxy == proxy_protocol::none ? std::string() : std::string(" proxy=") + to_string(b.proxy)) +
                (b.source.empty() ? std::string() : " source=" + b.source) + "\n";
      text += "ok backends=" + std::to_string(list.size()) + "\n";
      return append(out, text);
    }
    if (c.verb == "stats") {
      server_stats s = ctx.services.stats();
      std::size_t backends = ctx.backends.lock()->size();
      return append(out, "ok accepted=" + std::to_string(s.accepted) + " active=" + std::to_string(s.active) +
                             " queued=" + std::to_string(s.queued) + " unavailable=" + std::to_string(s.unavailable) +
                             " connect_failures=" + std::to_string(s.connect_failures) +
                             " bytes_in=" + std::to_string(s.bytes_in) + " bytes_out=" + std::to_string(s.bytes_out) +
                             " bytes_spliced=" + std::to_string(s.bytes_spliced) +
                             " refused=" + std::to_string(s.refused) +
                             " backends=" + std::to_string(backends) +
                             " concurrency=" + std::to_string(concurrency(ctx, out)) + "\n");
    }
    if (c.verb == "add") {
      if (!need_args(1, "add HOST:PORT [weight=W]")) return;
      int w = default_weight;
      std::string_view wtext;
      if (c.option("weight", wtext) && !weight_of(wtext, w)) return;
      std::string id;
      std::error_code e = ctx.services.add_static(c.args[0], w, &id);
      if (e == errc::bad_address || e == errc::resolve_failed) return error(out, "bad-argument", e.message());
      return answer(e, "id=" + id);
    }
    if (c.verb == "remove") {
      if (!need_args(1, "remove ID")) return;
      return answer(ctx.backends.lock()->remove(c.args[0]), "");
    }
    if (c.verb == "set-weight") {
      int w = 0;
      if (!need_args(2, "set-weight ID W") || !weight_of(c.args[1], w)) return;
      return answer(ctx.backends.lock()->set_weight(c.args[0], w), "weight=" + std::to_string(w));
    }
    if (c.verb == "drain" || c.verb == "undrain") {
      if (!need_args(1, "drain ID | undrain ID")) return;
      return answer(ctx.backends.lock()->drain(c.args[0], c.verb == "drain", ctx.now), "");
    }
    if (c.verb == "concurrency") {
      if (c.args.empty()) return append(out, "ok concurrency=" + std::to_string(concurrency(ctx, out)) + "\n");
      long long v = 0;
      if (parse_integer(c.args[0], min_concurrency, max_concurrency, v))
        return error(out, "bad-argument", "concurrency is -1 (no limit), 0 (paused) or N");
      int limit = static_cast<int>(v);
      admin_effect set;
      set.what = admin_effect::kind::set_concurrency;
      set.limit = limit;
      out.effects.push_back(std::move(set));
      return append(out, "ok concurrency=" + std::to_string(limit) + "\n");
    }
    if (c.verb == "help") return append(out, std::string(help_text()) + "ok\n");
    if (c.verb == "quit" || c.verb == "bye") {
      append(out, "ok bye\n");
      return end(out, "quit", true);
    }
    std::string verb(c.verb.substr(0, 64));
    error(out, "unknown-command", "'" + verb + "' (try 'help')");
  }

  static const char* help_text() noexcept {
    return "# harmony/1 admin commands (one per line; replies end with 'ok ...' or 'err CODE MESSAGE')\n"
           "# hello [harmony/1]                      protocol version\n"
           "# register port=P [id=ID] [host=H] [weight=W] [maxconn=N] [proxy=v1|v2] [heartbeat=DUR]   agent: join or rejoin\n"
           "# ping                                   agent heartbeat (answer: pong)\n"
           "# weight W                               agent: change its own weight\n"
           "# report [weight=W] [maxconn=N] [state=ready|drain|down]   agent: report its own load\n"
           "# close                                  agent: deregister now\n"
           "# list                                   backends with state, weight, connections\n"
           "# stats                                  balancer counters\n"
           "# add HOST:PORT [weight=W]               add a static backend\n"
           "# remove ID | set-weight ID W | drain ID | undrain ID\n"
           "# concurrency [N]                        show or set the concurrency limit\n"
           "# quit\n";
  }

  dialect current_dialect() const noexcept { return dialect_; }
  bool authenticated() const noexcept { return authenticated_; }
  const std::string& bound_id() const noexcept { return bound_id_; }    // the backend it speaks for
  const std::string& closed_id() const noexcept { return closed_id_; }  // deregistered here (legacy CLOSE)
  bool agent() const noexcept { return agent_; }  // a native agent: its connection is its liveness
  std::int64_t heartbeat_ms() const noexcept { return heartbeat_ms_; }
  bool ended() const noexcept { return ended_; }
  const resolved_address& peer() const noexcept { return peer_; }
  const std::string& peer_host() const noexcept { return peer_host_; }

 private:
  // `auth PROOF`: one try per nonce; a wrong or missing proof ends the connection.
  void command_auth(const command_line& c, admin_context& ctx, admin_result& out) {
    if (config_.secret.empty()) return error(out, "usage", "no secret is set: there is nothing to authenticate");
    if (authenticated_) return append(out, "ok authenticated\n");
    if (nonce_.empty()) {
      ctx.log(log_level::warn, "admin connection from %s closed: auth without a nonce", peer_name().c_str());
      error(out, "auth-required", "send 'hello' first: its reply carries the nonce");
      return end(out, "auth without a nonce", true);
    }
    std::string expected = admin_auth_proof(config_.secret, nonce_);
    nonce_.clear();  // used once, right or wrong
    std::string given = c.args.size() == 1 && c.options.empty() ? std::string(c.args[0]) : std::string();
    for (char& ch : given)
      if (ch >= 'A' && ch <= 'F') ch = static_cast<char>(ch - 'A' + 'a');
    if (!constant_time_equal(given, expected)) {
      ctx.log(log_level::warn, "admin connection from %s closed: wrong authentication proof", peer_name().c_str());
      error(out, "auth-failed", "wrong proof for the nonce");
      return end(out, "authentication failed", true);
    }
    authenticated_ = true;
    ctx.log(log_level::debug, "admin connection from %s authenticated", peer_name().c_str());
    append(out, "ok authenticated\n");
  }

  void command_register(const command_line& c, admin_context& ctx, admin_result& out) {
    std::string_view text;
    std::uint64_t port = 0;
    if (!c.option("port", text) || !parse_uint(text, 65535, port) || port == 0)
      return error(out, "bad-argument", "register needs port=1..65535");
    int weight = default_weight;
    if (c.option("weight", text) && parse_weight(text, weight)) return error(out, "bad-argument", weight_range());
    long long maxconn = 0;  // absent: no limit
    if (c.option("maxconn", text) && parse_integer(text, 0, max_maxconn, maxconn))
      return error(out, "bad-argument", "maxconn is 0 (no limit) to " + std::to_string(max_maxconn));
    proxy_protocol proxy = proxy_protocol::none;  // absent: none
    if (c.option("proxy", text) && parse_proxy_protocol(text, proxy))
      return error(out, "bad-argument", "proxy is none, v1 or v2");
    std::int64_t heartbeat = 0;
    if (c.option("heartbeat", text)) {
      duration d{};
      if (parse_duration(text, d) || d.count() <= 0)
        return error(out, "bad-argument", "heartbeat is a duration, e.g. 20s");
      heartbeat = d.count();
    }
    endpoint at{peer_host_, static_cast<std::uint16_t>(port)};
    resolved_address to = peer_.with_port(at.port);
    if (c.option("host", text)) {
      at.host.assign(text.data(), text.size());
      if (at.host.empty() || ctx.services.resolve(at, to)) return error(out, "bad-argument", "cannot resolve host");
    }
    std::string id;
    if (c.option("id", text)) id.assign(text.data(), text.size());
    {
      auto r = ctx.backends.lock();
      if (!id.empty() && r->known(id)) {
        r->set_address(id, at, to, ctx.now);
        r->set_weight(id, weight);
        r->set_online(id, true, ctx.now);
        ctx.log(log_level::debug, "backend %s re-registered at %s weight %d", id.c_str(), at.to_string().c_str(),
                weight);
      } else {
        // A balancer that restarted does not know the agent: it rejoins under its old id.
        std::string wanted = id;
        if (auto e = r->add(at, &to, weight, true, &id, ctx.now, wanted)) {
          ctx.log(log_level::warn, "registration from %s refused: %s", peer_name().c_str(), e.message().c_str());
          return error(out, "refused", e.message());
        }
        ctx.log(log_level::debug, "backend %s registered at %s weight %d", id.c_str(), at.to_string().c_str(), weight);
      }
      r->set_maxconn(id, static_cast<int>(maxconn));
      r->set_proxy(id, proxy);
    }
    admin_effect bind;
    bind.what = admin_effect::kind::bind_agent;
    bind.id = id;
    if (agent_ && bound_id_ != id) bind.previous = bound_id_;
    out.effects.push_back(std::move(bind));
    heartbeat_ms_ = heartbeat;
    bound_id_ = id;
    agent_ = true;
    append(out, "ok id=" + id + "\n");
    // A heartbeat longer than the host timeout lets the backend expire between two:
    // it would flap between up and expired. Accepted, but the agent and the log are told.
    if (config_.host_timeout_ms > 0 && heartbeat > config_.host_timeout_ms / 2) {
      std::string h = format_duration(duration(heartbeat)), t = format_duration(duration(config_.host_timeout_ms));
      ctx.log(log_level::warn, "backend %s: heartbeat %s is more than half the host timeout %s: it may expire between heartbeats",
              id.c_str(), h.c_str(), t.c_str());
      append(out, "notice heartbeat-too-long heartbeat " + h + " is more than half the host timeout " + t +
                      ": the backend may expire between heartbeats; use at most " +
                      format_duration(duration(config_.host_timeout_ms / 2)) + "\n");
    }
  }

  // `report weight=W maxconn=N state=ready|drain|down`, any subset but not none: an
  // agent sets its own backend's weight, connection limit (0: none) and readiness, as
  // HAProxy's agent-check lets a server do. All are checked before any is applied.
  void command_report(const command_line& c, admin_context& ctx, admin_result& out) {
    const char* usage = "report [weight=W] [maxconn=N] [state=ready|drain|down]";
    if (!c.args.empty() || c.options.empty()) return error(out, "usage", usage);
    int weight = 0;
    long long maxconn = -1;
    readiness state = readiness::ready;
    bool has_weight = false, has_maxconn = false, has_state = false;
    for (const auto& o : c.options) {
      if (o.first == "weight" && !has_weight) {
        if (parse_weight(o.second, weight)) return error(out, "bad-argument", weight_range());
        has_weight = true;
      } else if (o.first == "maxconn" && !has_maxconn) {
        if (parse_integer(o.second, 0, max_maxconn, maxconn))
          return error(out, "bad-argument", "maxconn must be a number from 0 (no limit) to " + std::to_string(max_maxconn));
        has_maxconn = true;
      } else if (o.first == "state" && !has_state) {
        if (parse_readiness(o.second, state)) return error(out, "bad-argument", "state is ready, drain or down");
        has_state = true;
      } else {
        return error(out, "usage", usage);  // unknown or repeated
      }
    }
    if (bound_id_.empty() || !agent_) return error(out, "not-registered", "register first");
    std::string applied;
    {
      auto r = ctx.backends.lock();
      std::error_code e;
      if (has_weight && !e) e = r->set_weight(bound_id_, weight);
      if (has_maxconn && !e) e = r->set_maxconn(bound_id_, static_cast<int>(maxconn));
      if (has_state && !e) e = r->set_readiness(bound_id_, state, ctx.now);
      if (e) return error(out, e == errc::unknown_backend ? "unknown-backend" : "failed", e.message());
    }
    if (has_weight) applied += " weight=" + std::to_string(weight);
    if (has_maxconn) applied += " maxconn=" + std::to_string(maxconn);
    if (has_state) applied += std::string(" state=") + to_string(state);
    ctx.log(log_level::info, "backend %s reports%s", bound_id_.c_str(), applied.c_str());
    append(out, "ok" + applied + "\n");
  }

  // The limit in force once the effects so far are applied.
  static int concurrency(admin_context& ctx, const admin_result& out) {
    for (auto it = out.effects.rbegin(); it != out.effects.rend(); ++it)
      if (it->what == admin_effect::kind::set_concurrency) return it->limit;
    return ctx.services.concurrency();
  }
  static std::string weight_range() {
    return "weight must be a number from " + std::to_string(min_weight) + " to " + std::to_string(max_weight);
  }
  static void append(admin_result& out, std::string text) { out.replies.push_back(std::move(text)); }
  static void error(admin_result& out, std::string_view code, std::string_view message) {
    std::string line = "err ";
    line.append(code.data(), code.size()).append(" ").append(message.data(), message.size()).append("\n");
    out.replies.push_back(std::move(line));
  }
  void end(admin_result& out, const char* why, bool graceful) {
    ended_ = true;
    admin_effect e;
    e.what = admin_effect::kind::end;
    e.graceful = graceful;
    e.why = why;
    out.effects.push_back(std::move(e));
  }
  std::string peer_name() const { return endpoint{peer_host_, peer_.port}.to_string(); }

  config config_;
  resolved_address peer_;
  std::string peer_host_;
  dialect dialect_ = dialect::undecided;
  std::string first_bytes_;
  legacy_parser legacy_;
  line_splitter lines_;
  std::string bound_id_;
  std::string closed_id_;
  bool agent_ = false;
  std::int64_t heartbeat_ms_ = 0;
  bool ended_ = false;
  bool authenticated_ = true;  // no secret, or the proof was right
  std::string nonce_;          // of the last hello, until an auth uses it
};

}  // namespace detail
}  // namespace harmony
