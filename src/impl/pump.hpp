namespace harmony {

struct rejected_access {
  static void set_peer(rejected_connection& c, std::string peer) { c.peer_ = std::move(peer); }
  static std::string& reply(rejected_connection& c) { return c.reply_; }
};

namespace detail {

// >>pump  the proxy core: two connections, both directions, backpressure, half-close
// What a proxied connection reads of the server's options, taken once.
struct relay_settings {
  std::int64_t connect_timeout_ms = 0;
  std::int64_t idle_timeout_ms = 0;
  std::int64_t queue_timeout_ms = 0;
  std::size_t queue_limit = 0;
  int requeue = 0;
  bool accept_proxy = false;
  std::string unavailable;
  std::function<void(std::error_code, rejected_connection&)> on_unavailable;
  std::function<void(const std::string&, std::error_code)> on_backend_error;
  std::function<void(const access_entry&)> on_access;

  static relay_settings from(const server_options& o) {
    relay_settings s;
    s.connect_timeout_ms = o.connect_timeout.count();
    s.idle_timeout_ms = o.idle_timeout.count();
    s.queue_timeout_ms = o.queue_timeout.count();
    s.queue_limit = o.queue_limit;
    s.requeue = o.requeue;
    s.accept_proxy = o.accept_proxy;
    s.unavailable = o.unavailable;
    s.on_unavailable = o.on_unavailable;
    s.on_backend_error = o.on_backend_error;
    s.on_access = o.on_access;
    return s;
  }
};

struct relay_counters {
  std::atomic<std::uint64_t> accepted{0}, active{0}, unavailable{0}, connect_failures{0}, bytes_in{0},
      bytes_out{0}, bytes_spliced{0}, bad_proxy_headers{0};
};

class session;

// What a session needs of the server around it, and no more: the loop and its
// buffers, the settings, the backend table (pick and release), the concurrency
// slots and the wait queue, the counters and the log. The worker provides it.
class session_host {
 public:
  virtual reactor& loop() noexcept = 0;
  virtual buffer_pool& pool() noexcept = 0;
#if defined(__linux__)
  // The loop's splice pipes, or null where this loop may not splice.
  virtual pipe_pool* pipes() noexcept = 0;
#endif
  virtual const relay_settings& settings() const noexcept = 0;
  virtual const logger& log() const noexcept = 0;
  virtual relay_counters& counters() noexcept = 0;
  // Chooses a backend for a client (by its address key), skipping the leases in
  // `tried`, and counts the connection against it.
  virtual bool pick(std::string_view client_key, const std::vector<lease>& tried, pick_result& out) = 0;
  // Ends a connection's count against its backend, with the bytes it moved.
  virtual void release(const lease& backend, bool failed, std::uint64_t bytes_in = 0, std::uint64_t bytes_out = 0) = 0;
  // What an attempt on a backend came to, for its health (>>health); `trial` when
  // the pick said it was the backend's trial.
  virtual void report(const lease& backend, attempt_outcome what, bool trial, std::string_view why) = 0;
  // Counts the client address against max_conns_per_client (`counted`: while one is
  // in force); false (counted and logged as refused) when it has as many open already.
  virtual bool take_client_address(const address& peer, bool& counted) = 0;
  // The client connection has ended (the connection limits count it); `peer` was
  // counted by take_client_address when `address_counted`.
  virtual void client_ended(const address& peer, bool address_counted) = 0;
  // A connection that should have begun with a PROXY header did not (accept_proxy).
  virtual void bad_proxy_header(const address& from, const char* why) = 0;
  virtual std::string backend_id(const lease& backend) = 0;
  // One proxied connection under the concurrency limit.
  virtual bool take_slot() = 0;
  virtual void give_slot() = 0;
  // The wait queue for a slot: false when it is full.
  virtual bool wait_for_slot(session& s) = 0;
  // Every backend that could serve is at its maxconn: gives back the session's slot
  // and queues it until a release makes room, at the head with its first wait time
  // when `keep_place` (it was queued before); false when the queue is full.
  virtual bool wait_for_backend(session& s, bool keep_place) = 0;
  virtual void stop_waiting(session& s) = 0;
  // The session has ended and may serve the next client.
  virtual void recycle(session& s) = 0;

 protected:
  ~session_host() = default;
};

// The requeue window of one connection. Until the backend sends its first byte,
// what the client sent stays in the upstream buffer, so that a backend that fails
// can be replaced and the same bytes sent to the next one. The window closes for
// good at the backend's first byte, or when the client's bytes outgrow the buffer.
class replay_window {
 public:
  void reset() noexcept { open_ = true; }
  bool is_open() const noexcept { return open_; }
  void backend_answered() noexcept { open_ = false; }
  // After the buffered bytes went out: whether they must stay for a replay.
  bool keep(std::size_t buffered, std::size_t capacity) noexcept {
    if (open_ && buffered < capacity) return true;
    open_ = false;
    return false;
  }
  // A backend that breaks may be replaced while the client has lost nothing:
  // the window is open and the backend has sent neither a byte nor a FIN.
  bool may_replay(std::uint64_t received_from_backend, bool backend_finished) const noexcept {
    return open_ && received_from_backend == 0 && !backend_finished;
  }

 private:
  bool open_ = true;
};

// A proxied connection: the client connection, the backend connection and one
// buffer per direction. A direction reads its source only when its buffer is
// empty and no write to its destination is going on, so a slow reader holds back
// its writer (backpressure); it passes EOF on as a FIN only once everything read
// has been written (half-close); an error on either side resets the other
// (reset propagation). Buffers come from the pool only while data is in flight,
// so an idle connection costs no buffer at all.
class session final : public connection_owner {
 public:
  // greeting: reading the PROXY header an upstream proxy sends first (accept_proxy).
  // passing_reset: one side failed; what it sent before still goes to the
  // other side, and the reset follows it there.
  enum class phase { idle, greeting, queued, connecting, retrying, relaying, passing_reset, farewell };

  explicit session(session_host& host) : host_(host), client_(host.loop()), backend_(host.loop()) {
    client_.set_owner(this);
    backend_.set_owner(this);
    backend_.share_release_with(client_);  // released when both sides' operations are back
    clock_.fire = [this] { on_clock(); };
  }
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  // Serves an accepted client socket: waits for a slot, or starts at once.
  void start(socket_handle fd, const address& peer);
  // Leaves the wait queue with a slot taken for it.
  void admitted();
  // Ends the connection now: used by shutdown of the whole server, too.
  void close(bool reset);

  phase current_phase() const noexcept { return phase_; }
  wait_hook<session> waiting;  // its place in the wait queue for a slot (>>wait-queue)

 private:
  struct direction {
    char* data = nullptr;
    std::uint32_t begin = 0;
    std::uint32_t end = 0;
    bool large = false;  // data is a large buffer
    bool bulk = false;   // the next buffer taken is large
    bool eof = false;    // the source sent its FIN
    bool shut = false;   // the FIN went on to the destination
    kernel_pipe pipe;          // borrowed while a streaming direction has bytes in the kernel
    std::uint32_t piped = 0;   // bytes in the pipe, read and not yet written
    bool holds_bytes() const noexcept { return piped > 0 || begin < end; }
  };

  void on_connected(connection& c, std::error_code error) override;
  void on_readable(connection& c) override;
  void on_written(connection& c, std::size_t bytes, std::error_code error) override;

  void begin();
  void read_greeting();
  void refuse_greeting(const char* why);
  void start_attempt();
  void wait_for_backend();
  void connected();
  bool read_ahead();
  void attempt_failed(std::error_code why);
  void unavailable(std::error_code why);
  void on_clock();
  void pump();
  bool flow(direction& d, connection& src, connection& dst);
  io_status send_held(direction& d, connection& dst, std::error_code& error);
  bool fill(direction& d, connection& src);
  void fail(connection& where, std::error_code error);
  void pass_reset();
  void farewell_pump();
  void release_buffers();
  void took_in(const connection& src, std::size_t n);
  void report(attempt_outcome what, std::string_view why = {});
  void put_out(const connection& dst, std::size_t n);
  io_status send_header(connection& dst, std::error_code& error);
  const proxy_addresses& ends();
  void ending(const char* how, std::string reason = {});
  void log_access();
  direction& towards(const connection& dst) noexcept { return &dst == &backend_ ? up_ : down_; }
  std::string client_text() const { return peer_.to_endpoint().to_string(); }

  session_host& host_;
  connection client_;
  connection backend_;
  direction up_;    // client to backend
  direction down_;  // backend to client
  phase phase_ = phase::idle;
  lease current_;
  std::vector<lease> tried_;
  int attempts_ = 0;
  bool holds_slot_ = false;
  bool queued_before_ = false;
  bool connected_ = false;  // the current attempt's connect went through
  bool trial_ = false;      // the current attempt is its backend's trial
  bool watch_ = false;      // the current attempt's outcome is still to be reported  // it has waited in the queue: waiting.since is when it began
  address peer_;
  timer clock_;
  std::int64_t last_activity_ = 0;
  std::uint64_t sent_to_backend_ = 0;
  std::uint64_t received_from_backend_ = 0;
  std::uint64_t spliced_ = 0;
  replay_window replay_;
  std::uint8_t reset_polls_ = 0;  // passing_reset: how often the other kernel was asked
  std::string farewell_;
  std::size_t farewell_sent_ = 0;
  // PROXY protocol: the client's and the listener's addresses (from an upstream
  // header, or the connection's own, found when first needed), and the bytes of a
  // header: what arrived of an upstream's (greeting), later the one the current
  // backend is sent ahead of the client's bytes, with what is left of it to send.
  proxy_addresses ends_;
  bool ends_known_ = false;
  bool address_counted_ = false;  // take_client_address counted peer_
  std::uint32_t header_left_ = 0;
  std::string header_;
  // How it ended, set by whatever ends it (null: the server stopped), and for the
  // access log (on_access only) what else it must tell.
  const char* end_ = nullptr;
  struct journal {
    std::int64_t accepted_at = 0;
    std::string via;
    std::vector<std::string> tried;
    std::string reason;
    resolved_address to;  // the current attempt's backend
    std::int64_t queued_ms = 0;
  };
  std::unique_ptr<journal> journal_;  // kept for the next client, like the strings above
  bool journaling_ = false;
};

inline void session::start(socket_handle fd, const address& peer) {
  up_ = direction{};
  down_ = direction{};
  current_ = lease{};
  tried_.clear();
  attempts_ = 0;
  holds_slot_ = false;
  queued_before_ = false;
  peer_ = peer;
  sent_to_backend_ = received_from_backend_ = spliced_ = 0;
  replay_.reset();
  farewell_.clear();
  farewell_sent_ = 0;
  header_left_ = 0;
  ends_known_ = address_counted_ = false;
  end_ = nullptr;
  const relay_settings& settings = host_.settings();
  journaling_ = static_cast<bool>(settings.on_access);
  if (journaling_) {
    if (!journal_) journal_ = std::make_unique<journal>();
    journal_->via.clear();
    journal_->tried.clear();
    journal_->reason.clear();
    journal_->to = resolved_address{};
    journal_->queued_ms = 0;
    journal_->accepted_at = host_.loop().now();
  }
  reactor& loop = host_.loop();
  last_activity_ = loop.now();
  phase_ = phase::connecting;  // owns resources from here on: close() gives them back
  if (std::error_code e = client_.adopt(fd)) {
    host_.log()(log_level::error, "cannot watch the connection from %s: %s", client_text().c_str(),
                e.message().c_str());
    ending("error", e.message());
    return close(true);
  }
  if (!settings.accept_proxy) return begin();
  phase_ = phase::greeting;
  header_.clear();
  loop.schedule(clock_, loop.now() + settings.connect_timeout_ms);
  client_.want_read(true);
  read_greeting();  // it has often arrived with the accept
}

// Once the client's address is known: counts it, then waits for a slot or starts.
inline void session::begin() {
  if (!host_.take_client_address(peer_, address_counted_)) {
    ending("refused");
    return close(false);
  }
  reactor& loop = host_.loop();
  if (host_.take_slot()) {
    holds_slot_ = true;
    return start_attempt();
  }
  if (!host_.wait_for_slot(*this)) return unavailable(make_error_code(errc::queue_full));
  queued_before_ = true;
  phase_ = phase::queued;
  loop.schedule(clock_, loop.now() + host_.settings().queue_timeout_ms);
}

// The backends are all at their maxconn: wait for one to make room, within the
// queue's bounds, counting the time already waited for a slot.
inline void session::wait_for_backend() {
  holds_slot_ = false;  // the host takes it back
  if (!host_.wait_for_backend(*this, queued_before_)) return unavailable(make_error_code(errc::queue_full));
  queued_before_ = true;
  phase_ = phase::queued;
  reactor& loop = host_.loop();
  loop.schedule(clock_, waiting.since + host_.settings().queue_timeout_ms);
}

inline void session::admitted() {
  reactor& loop = host_.loop();
  loop.cancel(clock_);
  if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
  holds_slot_ = true;
  start_attempt();
}

// Reads the upstream proxy's header: never past its end where its length shows (v2),
// and for v1 at most to the longest header, so that what follows it, the client's
// first bytes, fits the first relay buffer (check() asks buffer_bytes >= proxy_v1_max).
inline void session::read_greeting() {
  static constexpr std::size_t shortest = 15;  // "PROXY UNKNOWN\r\n"
  const std::string_view signature(proxy_v2_signature, sizeof proxy_v2_signature);
  for (;;) {
    proxy_parse p = parse_proxy_header(header_);
    if (p.result == proxy_parse::status::invalid) return refuse_greeting(p.why);
    if (p.result == proxy_parse::status::done) {
      host_.loop().cancel(clock_);
      client_.want_read(false);
      if (!p.addresses.local) {  // LOCAL and UNKNOWN: the connection's own addresses stand
        if (journaling_) journal_->via = client_text();
        ends_ = p.addresses;
        ends_known_ = true;
        peer_ = to_os_address(p.addresses.source);
      }
      if (std::size_t rest = header_.size() - p.consumed) {
        up_.data = host_.pool().take(false);
        std::memcpy(up_.data, header_.data() + p.consumed, rest);
        up_.end = static_cast<std::uint32_t>(rest);
      }
      header_.clear();
      return begin();
    }
    std::size_t have = header_.size(), want;
    if (have < shortest) want = shortest - have;
    else if (header_.compare(0, std::min(have, signature.size()), signature.substr(0, std::min(have, signature.size()))) != 0)
      want = proxy_v1_max - have;
    else if (have < proxy_v2_fixed) want = proxy_v2_fixed - have;
    else want = proxy_v2_fixed + ((std::size_t{static_cast<unsigned char>(header_[14])} << 8) |
                                  static_cast<unsigned char>(header_[15])) - have;
    header_.resize(have + want);
    std::error_code e;
    read_result n = client_.read(&header_[have], want, e);
    header_.resize(have + static_cast<std::size_t>(n > 0 ? n : 0));
    if (n > 0) continue;
    if (n == 0) return refuse_greeting("closed before its PROXY header ended");
    if (!e) return;  // the rest comes with the next readable event
    ending("client-reset", e.message());
    return close(true);
  }
}

inline void session::refuse_greeting(const char* why) {
  host_.bad_proxy_header(peer_, why);
  ending("bad-proxy-header", why);
  close(true);
}

inline void session::start_attempt() {
  reactor& loop = host_.loop();
  pick_result pick;
  std::string key = peer_.host_key();
  if (!host_.pick(key, tried_, pick)) {
    if (pick.full) return wait_for_backend();
    return unavailable(make_error_code(attempts_ ? errc::attempts_exhausted : errc::no_backend));
  }
  current_ = pick.chosen;
  connected_ = false;
  trial_ = pick.trial;
  watch_ = pick.watch || pick.trial;
  phase_ = phase::connecting;
  if (journaling_) journal_->to = pick.to;
  header_left_ = 0;
  if (pick.proxy != proxy_protocol::none) {
    header_ = encode_proxy_header(pick.proxy, ends());
    header_left_ = static_cast<std::uint32_t>(header_.size());
  }
  if (attempts_ == 0 && !up_.data && !up_.eof && !read_ahead()) return;
  std::size_t sent = 0;
  std::error_code e;
  address to = to_os_address(pick.to);
  // The PROXY header goes first, with the connect; the client's bytes follow it.
  const char* early = header_left_ ? header_.data() : up_.data + up_.begin;
  std::size_t early_size = header_left_ ? header_.size() : up_.end - up_.begin;
  switch (backend_.connect(to, early, early_size, sent, e)) {
    case io_status::failed: return attempt_failed(e);
    case io_status::done:
      if (header_left_) {
        header_left_ -= static_cast<std::uint32_t>(sent);
      } else {
        up_.begin += static_cast<std::uint32_t>(sent);
        put_out(backend_, sent);
      }
      return connected();
    case io_status::pending: break;
  }
  loop.schedule(clock_, loop.now() + host_.settings().connect_timeout_ms);
}

// A client has usually sent its first bytes by the time it is accepted, and a
// connect over loopback or a LAN has often completed when connect() returns.
// Reading before the connect and writing with it saves the two loop turns that
// would wait for those events; where a guess is wrong, the events take over.
// False when the connection has ended.
inline bool session::read_ahead() {
  buffer_pool& pool = host_.pool();
  char* buffer = pool.take(false);
  std::error_code e;
  read_result n = client_.read(buffer, pool.size(false), e);
  if (n > 0) {
    up_.data = buffer;
    up_.end = static_cast<std::uint32_t>(n);
    took_in(client_, static_cast<std::size_t>(n));
    if (static_cast<std::size_t>(n) == pool.size(false)) up_.bulk = true;  // more may follow
    return true;
  }
  pool.give(buffer, false);
  if (n == 0) up_.eof = true;
  if (!e) return true;
  ending("client-reset", e.message());
  close(true);  // the client is gone already
  return false;
}

inline void session::connected() {
  reactor& loop = host_.loop();
  connected_ = true;
  phase_ = phase::relaying;
  last_activity_ = loop.now();
  loop.cancel(clock_);
  if (host_.settings().idle_timeout_ms > 0) loop.schedule(clock_, last_activity_ + host_.settings().idle_timeout_ms);
  pump();
}

inline void session::on_connected(connection&, std::error_code error) {
  if (phase_ != phase::connecting) return;
  if (error) return attempt_failed(error);
  host_.loop().cancel(clock_);
  connected();
}

inline void session::on_readable(connection&) {
  if (phase_ == phase::relaying) return pump();
  if (phase_ == phase::greeting) return read_greeting();
  if (phase_ == phase::farewell) return farewell_pump();
}

inline void session::on_written(connection& c, std::size_t bytes, std::error_code error) {
  if (phase_ == phase::farewell) {
    if (error) return close(true);
    farewell_sent_ += bytes;
    return farewell_pump();
  }
  if (&c == &backend_ && header_left_ > 0) {
    header_left_ -= static_cast<std::uint32_t>(std::min<std::size_t>(bytes, header_left_));
  } else {
    direction& d = towards(c);
    if (d.piped) {
      d.piped -= static_cast<std::uint32_t>(bytes);
      spliced_ += bytes;
    } else {
      d.begin += static_cast<std::uint32_t>(bytes);
    }
    put_out(c, bytes);
  }
  if (phase_ == phase::passing_reset) return error ? close(true) : pass_reset();
  if (error) return fail(c, error);
  if (phase_ == phase::relaying) pump();
}

// A failed attempt is retried from a timer, after this loop turn: any stale event
// of the closed socket is then gone and cannot be mistaken for the new one.
inline void session::attempt_failed(std::error_code why) {
  reactor& loop = host_.loop();
  const relay_settings& settings = host_.settings();
  host_.counters().connect_failures.fetch_add(1, std::memory_order_relaxed);
  std::string id = host_.backend_id(current_);
  host_.log()(log_level::warn, "backend %s failed for %s: %s", id.c_str(), client_text().c_str(),
              why.message().c_str());
  if (settings.on_backend_error) settings.on_backend_error(id, why);
  // A failure of this host (out of descriptors or memory for the socket) says
  // nothing of the backend: it must not take a healthy backend out of rotation.
  bool ours = is_local_resource_error(why);
  if (!ours) watch_ = true;  // every failure of the backend counts; a trial of ours is abandoned
  report(ours ? attempt_outcome::abandoned : attempt_outcome::failed, why.message());
  host_.release(current_, !ours);
  if (journaling_) journal_->tried.push_back(to_os_address(journal_->to).to_endpoint().to_string());
  tried_.push_back(current_);
  current_ = lease{};
  backend_.close(false);
  client_.want_read(false);  // until the next backend is connected
  // The next backend gets everything the failed one was sent, from the start.
  up_.begin = 0;
  up_.shut = false;
  sent_to_backend_ = 0;
  replay_.reset();
  ++attempts_;
  if (attempts_ > settings.requeue) return unavailable(make_error_code(errc::attempts_exhausted));
  phase_ = phase::retrying;
  loop.schedule(clock_, loop.now());
}

inline void session::on_clock() {
  reactor& loop = host_.loop();
  switch (phase_) {
    case phase::queued:
      host_.stop_waiting(*this);
      if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
      return unavailable(make_error_code(errc::queue_timeout));
    case phase::greeting: return refuse_greeting("no PROXY header within the connect timeout");
    case phase::retrying: return start_attempt();
    case phase::connecting: return attempt_failed(make_error_code(errc::connect_timeout));
    case phase::relaying: {
      if (host_.settings().idle_timeout_ms <= 0) return;  // no idle timeout
      std::int64_t deadline = last_activity_ + host_.settings().idle_timeout_ms;
      if (loop.now() >= deadline) {
        host_.log()(log_level::debug, "idle timeout for %s", client_text().c_str());
        ending("idle-timeout");
        return close(false);
      }
      return loop.schedule(clock_, deadline);
    }
    case phase::passing_reset: return pass_reset();
    case phase::farewell: return close(false);
    case phase::idle: return;
  }
}

inline void session::pump() {
  if (!flow(up_, client_, backend_)) return;
  bool was_replayable = replay_.is_open();
  if (!flow(down_, backend_, client_)) return;
  // The backend's first answer ends the replay window: drop the kept request now,
  // so an idle connection holds no buffer.
  if (was_replayable && !replay_.is_open() && up_.data && up_.begin == up_.end) {
    host_.pool().give(up_.data, up_.large);
    up_.data = nullptr;
    up_.begin = up_.end = 0;
  }
  if (up_.shut && down_.shut) {
    ending("closed");
    return close(false);
  }
  // A side is told of readability only while its outgoing direction may read.
  client_.want_read(!up_.eof && !up_.holds_bytes());
  backend_.want_read(!down_.eof && !down_.holds_bytes());
}

inline void session::took_in(const connection& src, std::size_t n) {
  if (&src == &backend_) {
    received_from_backend_ += n;
    replay_.backend_answered();
    if (watch_) report(attempt_outcome::answered);
  }
  last_activity_ = host_.loop().now();
}

// Tells the backend's health what the current attempt came to, once.
inline void session::report(attempt_outcome what, std::string_view why) {
  if (!watch_) return;
  watch_ = false;
  host_.report(current_, what, trial_, why);
  trial_ = false;
}

inline void session::put_out(const connection& dst, std::size_t n) {
  if (&dst == &backend_) sent_to_backend_ += n;
  last_activity_ = host_.loop().now();
}

// Writes what is left of the PROXY header; the client's bytes wait behind it.
inline io_status session::send_header(connection& dst, std::error_code& error) {
  std::size_t written = 0;
  io_status sent = dst.write(header_.data() + (header_.size() - header_left_), header_left_, written, error);
  header_left_ -= static_cast<std::uint32_t>(written);
  return sent;
}

// The client's address and the one it connected to: an upstream's header said, or
// the connection's own (an IPv4 client of a dual-stack listener as IPv4).
inline const proxy_addresses& session::ends() {
  if (!ends_known_) {
    ends_ = proxy_addresses{};
    ends_.source = unmapped(to_resolved(peer_));
    address local;
    if (!local_address(client_.handle(), local)) ends_.destination = unmapped(to_resolved(local));
    ends_known_ = true;
  }
  return ends_;
}

// The first to tell how the connection ends is right: what follows (a reset passed
// on, a farewell that cannot be written) is its consequence.
inline void session::ending(const char* how, std::string reason) {
  if (end_) return;
  end_ = how;
  if (journaling_) journal_->reason = std::move(reason);
}

inline void session::log_access() {
  access_entry e;
  e.client = client_text();
  e.via = std::move(journal_->via);
  e.tried = std::move(journal_->tried);
  if (journal_->to.valid()) e.backend = to_os_address(journal_->to).to_endpoint().to_string();
  e.bytes_in = sent_to_backend_;
  e.bytes_out = received_from_backend_;
  e.queued = duration(journal_->queued_ms);
  e.lasted = duration(host_.loop().now() - journal_->accepted_at);
  e.end = end_ ? end_ : "shutdown";
  e.reason = std::move(journal_->reason);
  host_.settings().on_access(e);
}

// Moves one direction as far as it goes now: writes what it holds, then reads
// more. False when the session has ended.
inline bool session::flow(direction& d, connection& src, connection& dst) {
  buffer_pool& pool = host_.pool();
  for (;;) {
    if (dst.writing()) return true;  // on_written goes on
    if (&d == &up_ && header_left_ > 0) {
      std::error_code e;
      io_status sent = send_header(dst, e);
      if (sent == io_status::failed) {
        fail(dst, e);
        return false;
      }
      if (sent == io_status::pending) return true;
    } else if (d.holds_bytes()) {
      std::error_code e;
      io_status sent = send_held(d, dst, e);
      if (sent == io_status::failed) {
        fail(dst, e);
        return false;
      }
      if (sent == io_status::pending) return true;
    } else {
      if (d.data && !(&d == &up_ && replay_.keep(d.end, pool.size(d.large)))) {
        pool.give(d.data, d.large);
        d.data = nullptr;
        d.begin = d.end = 0;
      }
      if (d.eof) {
        if (!d.shut) {
          // When the other way is finished too the connection is about to close,
          // and closing sends this FIN anyway.
          const direction& other = &d == &up_ ? down_ : up_;
          if (!other.shut) dst.shutdown_send();
          d.shut = true;
        }
        return true;
      }
      if (!src.readable()) return true;
      if (!fill(d, src)) return false;
    }
  }
}

// Hands what a direction holds (its buffer, or its pipe) to the destination, as
// far as the destination takes it now.
inline io_status session::send_held(direction& d, connection& dst, std::error_code& error) {
  std::size_t written = 0;
  io_status sent;
#if defined(__linux__)
  if (d.piped) {
    sent = dst.write_from(d.pipe, d.piped, written, error);
    d.piped -= static_cast<std::uint32_t>(written);
    spliced_ += written;
  } else
#endif
  {
    sent = dst.write(d.data + d.begin, d.end - d.begin, written, error);
    d.begin += static_cast<std::uint32_t>(written);
  }
  put_out(dst, written);
  return sent;
}

// Reads once from `src` into the direction: through a pipe when it streams and
// may splice, else into its buffer. False when the session has ended.
inline bool session::fill(direction& d, connection& src) {
  buffer_pool& pool = host_.pool();
  std::error_code e;
  read_result n;
#if defined(__linux__)
  // What the backend was sent stays in the buffer while it may have to be replayed.
  pipe_pool* pipes = d.bulk && !d.data && !(&d == &up_ && replay_.is_open()) ? host_.pipes() : nullptr;
  if (pipes && (d.pipe.valid() || pipes->take(d.pipe))) {
    n = src.read_into(d.pipe, e);
    if (n > 0) {
      d.piped = static_cast<std::uint32_t>(n);
      if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
      took_in(src, static_cast<std::size_t>(n));
      return true;
    }
    if (!e) pipes->give(d.pipe, true);  // nothing in flight: no pipe held
  } else
#endif
  {
    if (!d.data) d.large = d.bulk;
    char* buffer = d.data ? d.data : pool.take(d.large);
    std::size_t room = pool.size(d.large) - d.end;
    n = src.read(buffer + d.end, room, e);
    if (n > 0) {
      d.data = buffer;
      d.end += static_cast<std::uint32_t>(n);
      if (static_cast<std::size_t>(n) == room) d.bulk = true;
      else if (static_cast<std::size_t>(n) < pool.size(false) / 4) d.bulk = false;
      took_in(src, static_cast<std::size_t>(n));
      return true;
    }
    if (!d.data) pool.give(buffer, d.large);
  }
  if (n == 0) d.eof = true;
  if (!e) return true;
  fail(src, e);
  return false;
}

inline void session::fail(connection& where, std::error_code error) {
  // A backend that breaks before its first byte is a failed attempt: the client
  // has lost nothing (what it sent is still buffered), so another backend may serve it.
  if (&where == &backend_ && replay_.may_replay(received_from_backend_, down_.eof))
    return attempt_failed(error == std::errc::connection_reset || error == std::errc::broken_pipe
                              ? make_error_code(errc::backend_reset)
                              : error);
  host_.log()(log_level::debug, "%s side of %s failed: %s", &where == &backend_ ? "backend" : "client",
              client_text().c_str(), error.message().c_str());
  ending(&where == &backend_ ? "backend-reset" : "client-reset", error.message());
  // A reset is passed on as a reset, but only behind the bytes the failed side
  // sent before it: those still go to the other side first.
  connection& other = &where == &backend_ ? client_ : backend_;
  where.close(true);
  if (phase_ != phase::relaying || !other.is_open()) return close(true);
  phase_ = phase::passing_reset;
  other.want_read(false);
  reset_polls_ = 0;
  pass_reset();
}

// Delivers what the failed side sent, waits (briefly, bounded) until the other
// side's kernel has delivered it too, since a reset discards what it still holds,
// then resets the other side.
inline void session::pass_reset() {
  direction& d = backend_.is_open() ? up_ : down_;  // towards the side still open
  connection& dst = &d == &up_ ? backend_ : client_;
  if (&d == &up_ && header_left_ > 0 && !dst.writing()) return close(true);  // no byte may pass its header
  while (!dst.writing() && d.holds_bytes()) {
    std::error_code e;
    io_status sent = send_held(d, dst, e);
    if (sent == io_status::failed) return close(true);
    if (sent == io_status::pending) return;  // on_written goes on
  }
  if (dst.writing()) return;
  reactor& loop = host_.loop();
  // Asked again after 1, 2, 4, 8, 16 ms, then every 32 ms, for as long as the
  // connect timeout (at least a second, at most about 8 s).
  std::int64_t patience = std::max<std::int64_t>(1000, host_.settings().connect_timeout_ms);
  std::int64_t polls = std::min<std::int64_t>(255, 5 + patience / 32);
  if (dst.unsent() > 0 && reset_polls_ < polls) {
    loop.schedule(clock_, loop.now() + (std::int64_t{1} << std::min<int>(reset_polls_, 5)));
    ++reset_polls_;
    return;
  }
  close(true);
}

inline void session::unavailable(std::error_code why) {
  const relay_settings& settings = host_.settings();
  host_.counters().unavailable.fetch_add(1, std::memory_order_relaxed);
  ending("unavailable", why.message());
  if (holds_slot_) {
    holds_slot_ = false;
    host_.give_slot();
  }
  farewell_ = settings.unavailable;
  if (settings.on_unavailable) {
    rejected_connection client;
    rejected_access::set_peer(client, client_text());
    settings.on_unavailable(why, client);
    farewell_ = std::move(rejected_access::reply(client));
  }
  host_.log()(log_level::info, "unavailable for %s: %s", client_text().c_str(), why.message().c_str());
  phase_ = phase::farewell;
  farewell_sent_ = 0;
  reactor& loop = host_.loop();
  loop.schedule(clock_, loop.now() + std::max<std::int64_t>(1000, host_.settings().connect_timeout_ms));
  farewell_pump();
}

// Sends the unavailable text, then a FIN, then reads until the client's FIN, so
// that unread client bytes never turn the close into a reset that eats the text.
inline void session::farewell_pump() {
  if (client_.writing()) return;  // on_written goes on
  if (farewell_sent_ < farewell_.size()) {
    std::size_t written = 0;
    std::error_code e;
    io_status s = client_.write(farewell_.data() + farewell_sent_, farewell_.size() - farewell_sent_, written, e);
    farewell_sent_ += written;
    if (s == io_status::failed) return close(true);
    if (s == io_status::pending) return;
  }
  if (!down_.shut) {
    client_.shutdown_send();
    down_.shut = true;
    client_.want_read(true);
  }
  char sink[4096];
  for (;;) {
    std::error_code e;
    read_result n = client_.read(sink, sizeof sink, e);
    if (n > 0) continue;
    if (n == 0 || e) return close(false);
    return;
  }
}

inline void session::release_buffers() {
  for (direction* d : {&up_, &down_}) {
    if (d->data) {
      host_.pool().give(d->data, d->large);
      d->data = nullptr;
    }
#if defined(__linux__)
    if (pipe_pool* pipes = host_.pipes()) pipes->give(d->pipe, d->piped == 0);
#endif
    d->piped = 0;
  }
}

inline void session::close(bool reset) {
  if (phase_ == phase::idle) return;
  reactor& loop = host_.loop();
  loop.cancel(clock_);
  if (phase_ == phase::queued) {
    host_.stop_waiting(*this);
    if (journaling_) journal_->queued_ms = loop.now() - waiting.since;
  }
  client_.close(reset);
  backend_.close(reset);
  bool served = current_.valid() && connected_;
  if (current_.valid()) {
    report(connected_ ? attempt_outcome::answered : attempt_outcome::abandoned);
    host_.release(current_, false, sent_to_backend_, received_from_backend_);
  }
  current_ = lease{};
  if (journaling_) {
    if (!served) journal_->to = resolved_address{};
    log_access();
  }
  relay_counters& counters = host_.counters();
  counters.bytes_in.fetch_add(sent_to_backend_, std::memory_order_relaxed);
  counters.bytes_out.fetch_add(received_from_backend_, std::memory_order_relaxed);
  counters.bytes_spliced.fetch_add(spliced_, std::memory_order_relaxed);
  counters.active.fetch_sub(1, std::memory_order_relaxed);
  host_.client_ended(peer_, address_counted_);
  phase_ = phase::idle;
  bool had_slot = holds_slot_;
  holds_slot_ = false;
  // A cancelled send may read its buffer until its completion is back.
  loop.retire(client_, [this] {
    release_buffers();
    host_.recycle(*this);
  });
  if (had_slot) host_.give_slot();
}

}  // namespace detail
}  // namespace harmony
