namespace harmony {

// >>client  harmony::client (a backend's agent) and its options
// The agent a backend runs: it registers with the admin port of one balancer or
// of several (native dialect), keeps one connection open to each with heartbeats
// both ways, reconnects to each on its own with backoff when that balancer
// restarts or the network drops, and registers again under the same id.

// What an agent says of its backend (HAProxy's agent-check states): `ready` takes
// new connections; `drain` takes none while the open ones finish; `down` is not
// eligible at all. An operator's drain is separate and comes on top.
enum class readiness { ready, drain, down };
const char* to_string(readiness r) noexcept;
// Parses "ready", "drain" or "down" (errc::bad_option otherwise).
std::error_code parse_readiness(std::string_view text, readiness& out);

// The most balancers one agent registers with.
inline constexpr std::size_t max_balancers = 64;
// An agent's reported connection limit (maxconn) is 0 (no limit) to max_maxconn (>>server).

struct client_options {
  std::string balancer = "localhost:1666";  // the balancer's admin address
  // Several balancers: the agent registers with each, with the same id everywhere.
  // When not empty it replaces `balancer`.
  std::vector<std::string> balancers;
  std::uint16_t port = 80;                  // the service port this backend serves on
  std::string host;                         // empty: the balancer uses this connection's peer address
  int weight = default_weight;
  int maxconn = 0;                          // reported connection limit; 0: none
  readiness state = readiness::ready;       // reported on (re)registration
  // The PROXY protocol header this backend expects ahead of each client's bytes
  // (backend_options::proxy), asked for on registration.
  proxy_protocol proxy = proxy_protocol::none;
  // How often the agent reports alive; keep it at most half the balancer's host timeout.
  duration ack{20000};
  duration reconnect_min{100};  // backoff after a failed connection, doubling up to max
  duration reconnect_max{5000};
  // On the agent's thread, each time a balancer registers it, with the id that balancer
  // knows it by.
  std::function<void(const std::string& id)> on_registered;
  // The balancers' admin secret (server_options::admin_secret); empty: none. With it the
  // agent answers each balancer's nonce (`auth PROOF`) before it registers there.
  std::string secret;
  log_function log;
  log_level level = log_level::info;
};

// Checks every option, as client::start() does: errc::bad_address for a malformed balancer
// address, errc::bad_option for another bad value (port 0, a weight outside min_weight to
// max_weight, a maxconn outside 0 to max_maxconn, a balancer listed twice or more than
// max_balancers, a duration that is not positive, a host with spaces), with what is wrong in
// `problem` when it is given.
std::error_code check(const client_options& options, option_problem* problem = nullptr);

// One balancer as the agent sees it (client::status()).
struct balancer_status {
  std::string balancer;            // its admin address, as configured
  std::string id;                  // the id it knows this backend by; empty before it registered
  bool registered = false;         // registered on a live connection now
  std::uint64_t registrations = 0; // how often it registered (the first time and after each reconnect)
};

class client {
 public:
  explicit client(client_options options = {});
  ~client();  // close()
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Runs the agent on a thread of its own; it connects to every balancer and keeps registering.
  std::error_code start();
  // Deregisters from every balancer now (they send no new connections; open ones
  // finish) and stops. Waits up to about two seconds in all for the balancers to confirm.
  std::error_code close();
  // Changes the weight, now on every balancer and for later registrations.
  std::error_code set_weight(int weight);
  // Reports the backend ready, draining or down, now and after later registrations.
  std::error_code set_state(readiness state);
  // Reports a connection limit (0: none), now and after later registrations.
  std::error_code set_maxconn(int maxconn);
  // The agent's identity: the id the first balancer gave it, under which it asks every
  // other balancer to register it. Empty before the first registration.
  std::string id() const;
  bool registered() const;  // registered with at least one balancer on a live connection now
  std::vector<balancer_status> status() const;  // one entry per balancer, in the configured order

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

// One operator command on a balancer's admin port, as `harmonyd ctl` sends it: connects to
// `admin` (HOST:PORT), says hello, answers the balancer's nonce with `secret` when it asks
// for a proof, sends `command` (one line, e.g. "list" or "drain ID") and puts every line of
// the reply in `reply`. Blocks the calling thread, at most `timeout` in all. {} when the
// reply ends with "ok ..." (or is "pong"); errc::unauthorized when the balancer wanted a
// secret or refused the proof; errc::protocol for an "err ..." reply or a connection that
// ends without one; the connect error, or std::errc::timed_out, otherwise.
// The answer to a balancer's `hello` nonce, for an agent or tool of your own: the hex of
// HMAC-SHA256(secret, "harmony/1 auth " + nonce), sent as `auth PROOF`.
std::string admin_proof(std::string_view secret, std::string_view nonce);

std::error_code admin_command(std::string_view admin, std::string_view command, std::string* reply = nullptr,
                              std::string_view secret = {}, duration timeout = duration{10000});

}  // namespace harmony
