namespace harmony {

// >>errors-impl  the error category, the parsers of the public types, the option checks
namespace detail {
class harmony_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "harmony"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::ok: return "success";
#define HARMONY_MESSAGE_ITEM(name, text) \
  case errc::name: return text;
      HARMONY_ERRORS(HARMONY_MESSAGE_ITEM)
#undef HARMONY_MESSAGE_ITEM
    }
    return "unknown harmony error";
  }
};

// The enumerator among `values` whose to_string() is `text`.
template <class E>
std::error_code parse_by_name(std::string_view text, std::initializer_list<E> values, E& out) {
  for (E v : values)
    if (text == to_string(v)) {
      out = v;
      return {};
    }
  return make_error_code(errc::bad_option);
}
}  // namespace detail

HARMONY_DEF const std::error_category& error_category() noexcept {
  static const detail::harmony_category category;
  return category;
}

HARMONY_DEF std::string endpoint::to_string() const {
  std::string text = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return text + ":" + std::to_string(port);
}

HARMONY_DEF std::error_code parse_endpoint(std::string_view text, endpoint& out) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return make_error_code(errc::bad_address);
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return make_error_code(errc::bad_address);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return make_error_code(errc::bad_address);  // IPv6 needs []
  }
  std::uint64_t number = 0;
  if (host.empty() || !detail::parse_uint(port, 65535, number)) return make_error_code(errc::bad_address);
  for (char c : host)
    if (static_cast<unsigned char>(c) <= ' ' || c == '/' || c == '[' || c == ']') return make_error_code(errc::bad_address);
  out.host.assign(host.data(), host.size());
  out.port = static_cast<std::uint16_t>(number);
  return {};
}

HARMONY_DEF std::error_code parse_duration(std::string_view text, duration& out) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "ms") scale = 1;
  else if (unit == "s") scale = 1000;
  else if (unit == "m") scale = 60000;
  else if (unit == "h") scale = 3600000;
  std::uint64_t number = 0;
  // A limit of about 100 years keeps every later addition far from overflow.
  const std::uint64_t limit = 3153600000000ULL;
  if (scale == 0 || !detail::parse_uint(text.substr(0, digits), limit / scale, number))
    return make_error_code(errc::bad_duration);
  out = duration(static_cast<duration::rep>(number * scale));
  return {};
}

HARMONY_DEF std::error_code parse_duration_with_unit(std::string_view text, duration& out) {
  bool bare = !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
  if (bare && text.find_first_not_of('0') != std::string_view::npos) return make_error_code(errc::bad_duration);
  return parse_duration(text, out);
}

HARMONY_DEF std::size_t derived_max_connections(std::uint64_t descriptor_limit,
                                                std::size_t max_admin_connections) noexcept {
  if (descriptor_limit == 0) return 10000;
  std::uint64_t reserve = 64 + static_cast<std::uint64_t>(max_admin_connections);
  std::uint64_t n = descriptor_limit > reserve + 2 ? (descriptor_limit - reserve) / 2 : 1;
  return static_cast<std::size_t>(std::min<std::uint64_t>(n, max_max_connections));
}

HARMONY_DEF std::string format_duration(duration d) {
  long long ms = static_cast<long long>(d.count());
  if (ms == 0) return "0s";
  for (auto unit : {std::make_pair(3600000LL, "h"), std::make_pair(60000LL, "m"), std::make_pair(1000LL, "s")})
    if (ms % unit.first == 0) return std::to_string(ms / unit.first) + unit.second;
  return std::to_string(ms) + "ms";
}

HARMONY_DEF std::error_code parse_integer(std::string_view text, long long low, long long high,
                                          long long& out) noexcept {
  bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  // The magnitude of the most negative long long is one more than the largest.
  const std::uint64_t largest = static_cast<std::uint64_t>(std::numeric_limits<long long>::max());
  std::uint64_t magnitude = 0;
  if (!detail::parse_uint(text, negative ? largest + 1 : largest, magnitude)) return make_error_code(errc::bad_option);
  long long value = negative ? static_cast<long long>(0 - magnitude) : static_cast<long long>(magnitude);
  if (value < low || value > high) return make_error_code(errc::bad_option);
  out = value;
  return {};
}

HARMONY_DEF std::error_code parse_weight(std::string_view text, int& out) {
  long long number = 0;
  if (auto e = parse_integer(text, min_weight, max_weight, number)) return e;
  out = static_cast<int>(number);
  return {};
}

HARMONY_DEF std::error_code parse_algorithm(std::string_view text, algorithm& out) {
  if (text == "leastconn") out = algorithm::leastconn;
  else if (text == "roundrobin") out = algorithm::roundrobin;
  else if (text == "random") out = algorithm::random;
  else if (text == "hash") out = algorithm::hash;
  else return make_error_code(errc::bad_option);
  return {};
}

HARMONY_DEF const char* to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::leastconn: return "leastconn";
    case algorithm::roundrobin: return "roundrobin";
    case algorithm::random: return "random";
    case algorithm::hash: return "hash";
  }
  return "?";
}

HARMONY_DEF const char* to_string(proxy_protocol p) noexcept {
  switch (p) {
    case proxy_protocol::none: return "none";
    case proxy_protocol::v1: return "v1";
    case proxy_protocol::v2: return "v2";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_proxy_protocol(std::string_view text, proxy_protocol& out) {
  return detail::parse_by_name(text, {proxy_protocol::none, proxy_protocol::v1, proxy_protocol::v2}, out);
}

HARMONY_DEF const char* to_string(log_level l) noexcept {
  switch (l) {
    case log_level::trace: return "trace";
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
    case log_level::off: return "off";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_log_level(std::string_view text, log_level& out) {
  return detail::parse_by_name(
      text, {log_level::trace, log_level::debug, log_level::info, log_level::warn, log_level::error, log_level::off}, out);
}

HARMONY_DEF bool log_enabled(log_level threshold, log_level level) noexcept {
  return threshold != log_level::off && level >= threshold;
}

namespace detail {
inline bool is_cidr(std::string_view text) noexcept;  // >>net-address

// Collects the first problem check() finds; later ones are ignored.
struct option_checker {
  option_problem* problem;
  std::error_code error;

  bool fail(errc code, const char* option, std::string reason) {
    if (error) return false;
    error = make_error_code(code);
    if (problem) *problem = option_problem{option, std::move(reason)};
    return false;
  }
  void address(const char* option, const std::string& text) {
    endpoint at;
    if (parse_endpoint(text, at)) fail(errc::bad_address, option, "'" + text + "' is not HOST:PORT (IPv6 as [::1]:PORT)");
  }
  template <class T, class Bound>
  void range(const char* option, T value, Bound low, Bound high) {
    if (value < static_cast<T>(low) || value > static_cast<T>(high))
      fail(errc::bad_option, option, "must be from " + std::to_string(low) + " to " + std::to_string(high));
  }
  void durations(const char* option, duration d, duration low, duration high) {
    if (d < low || d > high)
      fail(errc::bad_option, option, "must be from " + format_duration(low) + " to " + format_duration(high));
  }
  void positive(const char* option, duration d) {
    if (d.count() <= 0) fail(errc::bad_option, option, "must be positive (e.g. 5s)");
  }
  std::error_code done() {
    if (!error && problem) *problem = option_problem{};
    return error;
  }
};
}  // namespace detail

namespace detail {
inline constexpr std::uint16_t dns_port = 53;

// A name server as an option gives it: ADDRESS (port 53), ADDRESS:PORT or [IPv6]:PORT.
inline std::error_code parse_nameserver(std::string_view text, endpoint& out) {
  if (text.empty()) return make_error_code(errc::bad_address);
  if (text.front() != '[' && text.find(':') != text.rfind(':')) {  // a bare IPv6 address
    out = endpoint{std::string(text), dns_port};
    return {};
  }
  if (text.find(':') == std::string_view::npos) {
    out = endpoint{std::string(text), dns_port};
    return {};
  }
  if (auto e = parse_endpoint(text, out)) return e;
  return out.port == 0 ? make_error_code(errc::bad_address) : std::error_code{};
}

}  // namespace detail

HARMONY_DEF std::error_code check(const server_options& o, option_problem* problem) {
  detail::option_checker c{problem, {}};
  c.address("listen", o.listen);
  if (!o.admin.empty()) c.address("admin", o.admin);
  if (!o.stats.empty()) c.address("stats", o.stats);
  c.range("workers", o.workers, min_workers, max_workers);
  c.range("concurrency", o.concurrency, min_concurrency, max_concurrency);
  c.range("requeue", o.requeue, 0, max_requeue);
  if (o.slow_start.count() < 0 || o.slow_start > max_slow_start)
    c.fail(errc::bad_option, "slow_start", "must be from 0s to " + format_duration(max_slow_start));
  c.range("queue_limit", o.queue_limit, std::size_t{0}, max_queue_limit);
  // 0 would make every backend expire, every connect fail at once, every admin
  // connection close at once; idle_timeout 0 means no idle timeout, queue_timeout 0
  // that a connection which finds no slot is refused at once.
  c.positive("host_timeout", o.host_timeout);
  c.positive("connect_timeout", o.connect_timeout);
  if (o.idle_timeout.count() < 0) c.fail(errc::bad_option, "idle_timeout", "must not be negative (0: no idle timeout)");
  if (o.queue_timeout.count() < 0) c.fail(errc::bad_option, "queue_timeout", "must not be negative");
  c.positive("admin_timeout", o.admin_timeout);
  c.range("max_backends", o.max_backends, std::size_t{1}, max_max_backends);
  c.range("max_admin_connections", o.max_admin_connections, std::size_t{1}, max_max_admin_connections);
  c.range("max_admin_line", o.max_admin_line, min_max_admin_line, max_max_admin_line);
  c.range("max_connections", o.max_connections, std::size_t{0}, max_max_connections);
  c.range("max_conns_per_client", o.max_conns_per_client, std::size_t{0}, max_max_connections);
  c.range("buffer_bytes", o.buffer_bytes, std::size_t{1}, max_buffer_bytes);
  c.range("bulk_buffer_bytes", o.bulk_buffer_bytes, std::size_t{0}, max_buffer_bytes);
  // What follows a v1 header in its last read goes into the first relay buffer.
  if (o.accept_proxy && o.buffer_bytes < proxy_v1_max)
    c.fail(errc::bad_option, "buffer_bytes", "must be at least " + std::to_string(proxy_v1_max) + " with accept_proxy");
  if (o.resolve_interval < min_resolve_interval || o.resolve_interval > max_resolve_interval)
    c.fail(errc::bad_option, "resolve_interval",
           "must be from " + format_duration(min_resolve_interval) + " to " + format_duration(max_resolve_interval));
  for (const std::string& text : o.nameservers) {
    endpoint at;
    if (detail::parse_nameserver(text, at) || !detail::is_numeric_host(at.host))
      c.fail(errc::bad_address, "nameservers", "'" + text + "' is not ADDRESS, ADDRESS:PORT or [IPv6]:PORT");
  }
  for (const std::string& block : o.allow_legacy)
    if (!detail::is_cidr(block))
      c.fail(errc::bad_option, "allow_legacy", "'" + block + "' is not an address or CIDR block (10.0.0.0/8, fd00::/8)");
  c.range("max_fails", o.max_fails, 0, max_max_fails);
  c.durations("fail_timeout", o.fail_timeout, min_fail_timeout, max_fail_timeout);
  if (o.check_interval.count() != 0) c.durations("check_interval", o.check_interval, min_check_interval, max_check_interval);
  c.range("check_rise", o.check_rise, 1, max_check_rise_fall);
  c.range("check_fall", o.check_fall, 1, max_check_rise_fall);
  c.range("check_send", o.check_send.size(), std::size_t{0}, max_check_text);
  c.range("check_expect", o.check_expect.size(), std::size_t{0}, max_check_text);
  if (o.drain_timeout.count() < 0 || o.drain_timeout > max_drain_timeout)
    c.fail(errc::bad_option, "drain_timeout", "must be from 0s (stop at once) to " + format_duration(max_drain_timeout));
#if defined(_WIN32)
  if (!o.inherited.listen.empty() || o.inherited.admin >= 0 || o.inherited.stats >= 0)
    c.fail(errc::bad_option, "inherited", "inherited sockets need POSIX (on Windows an upgrade is a restart)");
#else
  for (std::int64_t s : o.inherited.listen)
    if (s < 0 || s > std::numeric_limits<int>::max()) c.fail(errc::bad_option, "inherited", "a listen socket is not a descriptor");
#endif
  return c.done();
}

HARMONY_DEF std::error_code check(const client_options& o, option_problem* problem) {
  detail::option_checker c{problem, {}};
  if (o.balancers.empty()) c.address("balancer", o.balancer);
  if (o.balancers.size() > max_balancers)
    c.fail(errc::bad_option, "balancers", "at most " + std::to_string(max_balancers) + " balancers");
  for (std::size_t i = 0; i < o.balancers.size(); ++i) {
    c.address("balancers", o.balancers[i]);
    for (std::size_t j = 0; j < i; ++j)
      if (o.balancers[j] == o.balancers[i]) c.fail(errc::bad_option, "balancers", "'" + o.balancers[i] + "' is listed twice");
  }
  c.range("port", o.port, 1, 65535);
  c.range("weight", o.weight, min_weight, max_weight);
  c.range("maxconn", o.maxconn, 0, max_maxconn);
  // The host travels in a space-separated register line.
  for (char ch : o.host)
    if (static_cast<unsigned char>(ch) <= ' ') {
      c.fail(errc::bad_option, "host", "'" + o.host + "' is not a host name or address");
      break;
    }
  c.positive("ack", o.ack);
  c.positive("reconnect_min", o.reconnect_min);
  if (o.reconnect_max < o.reconnect_min) c.fail(errc::bad_option, "reconnect_max", "must not be less than reconnect_min");
  return c.done();
}

HARMONY_DEF const char* to_string(readiness r) noexcept {
  switch (r) {
    case readiness::ready: return "ready";
    case readiness::drain: return "drain";
    case readiness::down: return "down";
  }
  return "?";
}

HARMONY_DEF std::error_code parse_readiness(std::string_view text, readiness& out) {
  return detail::parse_by_name(text, {readiness::ready, readiness::drain, readiness::down}, out);
}

}  // namespace harmony
