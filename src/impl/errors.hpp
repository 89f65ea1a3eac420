namespace harmony {

// >>errors-impl  the error category and the parsers of the public types
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

HARMONY_DEF std::error_code parse_weight(std::string_view text, int& out) {
  std::uint64_t number = 0;
  if (!detail::parse_uint(text, static_cast<std::uint64_t>(max_weight), number) ||
      number < static_cast<std::uint64_t>(min_weight))
    return make_error_code(errc::bad_option);
  out = static_cast<int>(number);
  return {};
}

HARMONY_DEF std::error_code parse_algorithm(std::string_view text, algorithm& out) {
  if (text == "leastconn") out = algorithm::leastconn;
  else if (text == "roundrobin") out = algorithm::roundrobin;
  else return make_error_code(errc::bad_option);
  return {};
}

HARMONY_DEF const char* to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::leastconn: return "leastconn";
    case algorithm::roundrobin: return "roundrobin";
  }
  return "?";
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
  for (log_level l : {log_level::trace, log_level::debug, log_level::info, log_level::warn, log_level::error,
                      log_level::off})
    if (text == to_string(l)) {
      out = l;
      return {};
    }
  return make_error_code(errc::bad_option);
}

}  // namespace harmony
