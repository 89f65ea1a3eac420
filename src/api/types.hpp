namespace harmony {

// >>types  endpoint, durations, algorithm, logger
using duration = std::chrono::milliseconds;

// A host (name, IPv4 or IPv6 literal) and a port. Text form: HOST:PORT or [IPv6]:PORT.
struct endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};

// Parses HOST:PORT / [IPv6]:PORT; port 0 is allowed (an ephemeral port when listening).
std::error_code parse_endpoint(std::string_view text, endpoint& out);
// Parses 500ms, 30s, 1m, 2h, or a bare number of milliseconds.
std::error_code parse_duration(std::string_view text, duration& out);
// The same where people type durations (harmonyd's flags): the unit is required, so
// that `10` is not silently 10 ms; only 0 may stand alone. errc::bad_duration otherwise.
std::error_code parse_duration_with_unit(std::string_view text, duration& out);
// The text parse_duration reads back: the largest unit that divides exactly (2h, 1m,
// 30s, 500ms; zero is 0s).
std::string format_duration(duration d);
// Parses a decimal integer, optionally negative, from low to high (errc::bad_option
// when it is not a number or is outside the range).
std::error_code parse_integer(std::string_view text, long long low, long long high, long long& out) noexcept;

// Weights are relative shares of traffic: 500, 500 and 1000 take 25%, 25% and 50%.
// The one definition of their range, checked wherever a weight comes in.
inline constexpr int min_weight = 1;
inline constexpr int max_weight = 1 << 20;  // keeps every product the selector forms within 63 bits
inline constexpr int default_weight = 500;  // harmony.js's default
// Parses a weight from min_weight to max_weight (errc::bad_option otherwise).
std::error_code parse_weight(std::string_view text, int& out);

enum class algorithm {
  leastconn,   // minimise active/weight; ties go by smooth weighted round-robin
  roundrobin,  // smooth weighted round-robin
  random,      // weighted power of two choices: two drawn by weight, the less loaded taken
  hash,        // consistent hashing of the client address (Maglev table), the same on every balancer
};
// The Maglev lookup table of `hash`: a prime number of entries, shared out among the
// backends in proportion to their weights.
inline constexpr std::uint32_t hash_table_size = 65537;
std::error_code parse_algorithm(std::string_view text, algorithm& out);
const char* to_string(algorithm a) noexcept;

// The PROXY protocol (HAProxy's proxy-protocol.txt) spoken ahead of a connection's own
// bytes, so that the far end learns the client's address: not at all, the text line
// (v1) or the binary header (v2).
enum class proxy_protocol : std::uint8_t { none, v1, v2 };
std::error_code parse_proxy_protocol(std::string_view text, proxy_protocol& out);  // "none", "v1", "v2"
const char* to_string(proxy_protocol p) noexcept;
inline constexpr std::size_t proxy_v1_max = 107;  // the longest v1 header line, CRLF included

enum class log_level { trace, debug, info, warn, error, off };
using log_function = std::function<void(log_level, std::string_view message)>;
const char* to_string(log_level l) noexcept;
std::error_code parse_log_level(std::string_view text, log_level& out);
// Whether a message at `level` passes a logger set to `threshold` (off passes nothing).
bool log_enabled(log_level threshold, log_level level) noexcept;

// What check(server_options) or check(client_options) found wrong: the option by its
// member name, and why, e.g. {"workers", "must be from 1 to 256"}.
struct option_problem {
  const char* option = nullptr;  // nullptr when every option is valid
  std::string reason;
};

// A client connection that could not be served, handed to the unavailable callback.
class rejected_connection {
 public:
  // The client's address, e.g. "127.0.0.1:53211".
  const std::string& peer() const noexcept { return peer_; }
  // Queues bytes to send before the connection is closed.
  void send(std::string_view bytes) { reply_.append(bytes.data(), bytes.size()); }

 private:
  friend struct rejected_access;
  std::string peer_;
  std::string reply_;
};

}  // namespace harmony
