namespace harmony {
namespace detail {

// >>net-address  sans-IO resolved address: family, 16 address bytes, port
// Where a backend is reached, as plain bytes: what the registry stores and
// hands to a connection. Only the platform layer (>>os-address) turns it into
// an OS socket address, so policy code names no OS type.
enum class ip_family : std::uint8_t { none, v4, v6 };

struct resolved_address {
  ip_family family = ip_family::none;
  std::uint8_t bytes[16] = {};  // network order; IPv4 uses the first 4
  std::uint16_t port = 0;       // host order
  std::uint32_t scope = 0;      // IPv6 scope (interface) id, 0 otherwise

  static resolved_address v4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d, std::uint16_t port) {
    resolved_address r;
    r.family = ip_family::v4;
    r.bytes[0] = a;
    r.bytes[1] = b;
    r.bytes[2] = c;
    r.bytes[3] = d;
    r.port = port;
    return r;
  }
  bool valid() const noexcept { return family != ip_family::none; }
  std::size_t host_size() const noexcept { return family == ip_family::v4 ? 4 : family == ip_family::v6 ? 16 : 0; }
  // The same host at another port.
  resolved_address with_port(std::uint16_t p) const noexcept {
    resolved_address r = *this;
    r.port = p;
    return r;
  }
  // The host part only, as bytes: the persistence key of a client.
  std::string host_key() const { return std::string(reinterpret_cast<const char*>(bytes), host_size()); }
  bool operator==(const resolved_address& o) const noexcept {
    return family == o.family && port == o.port && scope == o.scope &&
           std::memcmp(bytes, o.bytes, host_size()) == 0;
  }
  bool operator!=(const resolved_address& o) const noexcept { return !(*this == o); }
};

}  // namespace detail
}  // namespace harmony
