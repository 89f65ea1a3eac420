namespace harmony {
namespace detail {

// >>stream  a buffered byte stream on a connection, for the admin port and the agent
// Read callbacks, queued writes, graceful or immediate close. Bytes written while
// a write is going on wait in a second string, so the bytes the connection is
// sending never move. A stream is released through reactor::retire(connection()),
// so a callback may close (and so release) its own stream.
class stream final : public connection_owner {
 public:
  std::function<void(std::string_view)> on_data;
  std::function<void(std::error_code)> on_connect;  // outgoing streams: once, error or success
  std::function<void(std::error_code)> on_close;    // once: empty code on a clean EOF

  explicit stream(reactor& loop) : conn_(loop) { conn_.set_owner(this); }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  bool is_open() const noexcept { return conn_.is_open(); }
  connection& socket() noexcept { return conn_; }
  // Bytes accepted by write() and not yet handed to the system.
  std::size_t pending() const noexcept { return queued_.size() + sending_.size(); }

  // Takes an accepted socket (closed on failure).
  std::error_code attach(socket_handle fd) {
    reset_state();
    if (auto e = conn_.adopt(fd)) return e;
    conn_.want_read(true);
    return {};
  }

  std::error_code connect(const address& to) {
    reset_state();
    std::size_t sent = 0;
    std::error_code e;
    io_status s = conn_.connect(to, nullptr, 0, sent, e);
    if (s == io_status::failed) return e;
    conn_.want_read(true);
    if (s == io_status::done && on_connect) on_connect({});
    return {};
  }

  void write(std::string_view bytes) {
    if (!conn_.is_open() || closing_) return;
    queued_.append(bytes.data(), bytes.size());
    flush();
  }

  // Sends what is queued and a FIN, then waits for the peer's FIN and closes.
  // on_close follows when that completes later, not when it completes at once.
  void finish() {
    if (!conn_.is_open() || closing_) return;
    closing_ = true;
    finishing_ = true;
    flush();
    if (draining_ && conn_.is_open()) read_all();
    finishing_ = false;
  }

  // Closes now, with a reset when `reset`. No callback follows.
  void close(bool reset = false) { conn_.close(reset); }

 private:
  void on_connected(connection&, std::error_code e) override {
    if (e) {
      close();
      if (on_connect) on_connect(e);
      return;
    }
    if (on_connect) on_connect({});
    if (conn_.is_open()) flush();
  }
  void on_readable(connection&) override { read_all(); }
  void on_written(connection&, std::size_t, std::error_code e) override {
    if (e) return hang_up(e);
    sending_.clear();
    flush();
  }

  void reset_state() {
    close();
    queued_.clear();
    sending_.clear();
    closing_ = draining_ = false;
  }

  void flush() {
    if (!conn_.is_open() || conn_.connecting() || conn_.writing()) return;  // on_written goes on
    while (!queued_.empty()) {
      sending_.swap(queued_);
      queued_.clear();
      std::size_t written = 0;
      std::error_code e;
      switch (conn_.write(sending_.data(), sending_.size(), written, e)) {
        case io_status::done: sending_.clear(); continue;
        case io_status::pending: return;
        case io_status::failed: return hang_up(e);
      }
    }
    if (closing_ && !draining_) {
      // FIN first, then read until the peer's FIN: closing with unread input
      // would send a reset that can destroy the replies still in flight.
      conn_.shutdown_send();
      draining_ = true;
      if (!finishing_) read_all();
    }
  }

  void read_all() {
    char buffer[4096];
    for (;;) {
      std::error_code e;
      read_result n = conn_.read(buffer, sizeof buffer, e);
      if (n > 0) {
        if (draining_) continue;
        if (on_data) on_data(std::string_view(buffer, static_cast<std::size_t>(n)));
        if (!conn_.is_open() || conn_.retired) return;
        continue;
      }
      if (n == 0 || e) return hang_up(e);
      return;
    }
  }

  void hang_up(std::error_code e) {
    close(static_cast<bool>(e));
    if (on_close && !finishing_) on_close(e);
  }

  connection conn_;
  bool closing_ = false;
  bool finishing_ = false;
  bool draining_ = false;
  std::string queued_;   // written, waiting for the write in flight
  std::string sending_;  // the write in flight: the connection points into it
};

// The connections of a port that serves streams (the admin port, the stats port):
// owned here, each freed after the loop turn in which it closed (reactor::retire).
// The port closes them and settles its loop before this goes.
template <class Connection>
class stream_set {
 public:
  explicit stream_set(reactor& loop) : loop_(loop) {}
  template <class... Args>
  Connection* add(Args&&... args) {
    auto c = std::make_unique<Connection>(std::forward<Args>(args)...);
    Connection* raw = c.get();
    items_.emplace(raw, std::move(c));
    return raw;
  }
  void release(Connection* c) {
    loop_.retire(c->io.socket(), [this, c] { items_.erase(c); });
  }
  void close_all() {
    for (auto& c : items_) c.second->io.close();
  }
  // Calls f on each; f may end (release) the one it is given.
  template <class F>
  void each(F f) {
    for (auto& c : items_) f(*c.second);
  }
  std::size_t size() const noexcept { return items_.size(); }

 private:
  reactor& loop_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> items_;
};

}  // namespace detail
}  // namespace harmony
