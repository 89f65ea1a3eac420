namespace harmony {
namespace detail {

// >>stats  the stats port: /metrics, /status.json and the status page, on the first loop
// One HTTP exchange per connection (Connection: close): read the request head,
// answer from a snapshot taken then, finish. Bounded: a head of at most
// http_max_header bytes, stats_timeout to send it, stats_max_connections open.
inline constexpr std::int64_t stats_timeout_ms = 10000;
inline constexpr std::size_t stats_max_connections = 64;

class stats_server;

class stats_connection {
 public:
  stats_connection(stats_server& owner, reactor& loop) : io(loop), owner_(owner), loop_(loop) {
    clock_.fire = [this] { end(); };
  }
  ~stats_connection() { loop_.cancel(clock_); }
  stats_connection(const stats_connection&) = delete;
  stats_connection& operator=(const stats_connection&) = delete;
  void start(socket_handle fd);
  void end();

  stream io;

 private:
  void on_data(std::string_view bytes);

  stats_server& owner_;
  reactor& loop_;
  timer clock_;
  std::string head_;
  bool answered_ = false;
  bool ended_ = false;
};

class stats_server {
 public:
  stats_server(server::impl& srv, reactor& loop) : srv_(srv), loop_(loop), listener_(loop, srv.log), connections_(loop) {
    listener_.on_accept = [this](socket_handle fd, const address&) { adopt(fd); };
  }
  ~stats_server() {
    connections_.close_all();
    listener_.close();
    loop_.settle();  // the streams and accepts are memory the kernel may still write
  }
  stats_server(const stats_server&) = delete;
  stats_server& operator=(const stats_server&) = delete;

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
    return listener_.open(s);
  }
  // server::hand_over, on this loop: the successor takes the port.
  void hand_over() { listener_.close(); }
  socket_handle listening_socket() const noexcept { return listener_.socket(); }  // on this loop
  server::impl& srv() noexcept { return srv_; }
  void release(stats_connection* c) { connections_.release(c); }

 private:
  void adopt(socket_handle fd) {
    if (connections_.size() >= stats_max_connections) {
      close_socket(fd);
      return;
    }
    connections_.add(*this, loop_)->start(fd);
  }

  server::impl& srv_;
  reactor& loop_;
  acceptor listener_;
  stream_set<stats_connection> connections_;
};

inline void stats_connection::start(socket_handle fd) {
  io.on_data = [this](std::string_view bytes) { on_data(bytes); };
  io.on_close = [this](std::error_code) { end(); };
  if (io.attach(fd)) return end();
  loop_.schedule(clock_, loop_.now() + stats_timeout_ms);
}

inline void stats_connection::end() {
  if (ended_) return;
  ended_ = true;
  loop_.cancel(clock_);
  io.close();
  owner_.release(this);
}

inline void stats_connection::on_data(std::string_view bytes) {
  if (answered_ || ended_) return;
  head_.append(bytes.data(), std::min(bytes.size(), http_max_header + 4 - std::min(head_.size(), http_max_header + 4)));
  http_request r = parse_http_request(head_);
  if (r.result == http_request::status::incomplete && head_.size() <= http_max_header) return;
  answered_ = true;
  io.on_close = [this](std::error_code) { end(); };
  io.write(stats_answer(r, owner_.srv().snapshot()));
  io.finish();  // the FIN, then the client's; on_close follows when that takes longer
  if (!io.is_open()) end();
}

}  // namespace detail
}  // namespace harmony
