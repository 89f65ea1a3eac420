namespace harmony {

// >>client  harmony::client (a backend's agent) and its options
// The agent a backend runs: it registers with the balancer's admin port (native
// dialect), keeps one connection open with heartbeats both ways, reconnects
// with backoff when the balancer restarts or the network drops, and registers
// again under the same id where the balancer still knows it.
struct client_options {
  std::string balancer = "localhost:1666";  // the balancer's admin address
  std::uint16_t port = 80;                  // the service port this backend serves on
  std::string host;                         // empty: the balancer uses this connection's peer address
  int weight = default_weight;
  // How often the agent reports alive; keep it at most half the balancer's host timeout.
  duration ack{20000};
  duration reconnect_min{100};  // backoff after a failed connection, doubling up to max
  duration reconnect_max{5000};
  std::function<void(const std::string& id)> on_registered;  // on the agent's thread
  log_function log;
  log_level level = log_level::info;
};

// Checks every option, as client::start() does: errc::bad_address for a malformed balancer
// address, errc::bad_option for another bad value (port 0, a weight outside min_weight to
// max_weight, a duration that is not positive, a host with spaces), with what is wrong in
// `problem` when it is given.
std::error_code check(const client_options& options, option_problem* problem = nullptr);

class client {
 public:
  explicit client(client_options options = {});
  ~client();  // close()
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Runs the agent on a thread of its own; it connects and keeps registering.
  std::error_code start();
  // Deregisters now (the balancer sends no new connections; open ones finish) and stops.
  // Waits up to about two seconds for the balancer to confirm.
  std::error_code close();
  // Changes the weight, now and for later registrations.
  std::error_code set_weight(int weight);
  std::string id() const;     // empty before the first registration
  bool registered() const;    // registered on a live connection now

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace harmony
