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

// A numeric IPv4 (dotted quad) or IPv6 (RFC 4291 text: "::" once, an IPv4 tail
// allowed) host, no port, no scope: true when `text` is one.
inline bool parse_ip(std::string_view text, resolved_address& out) noexcept {
  auto v4 = [](std::string_view t, std::uint8_t* to) {
    int parts = 0;
    while (parts < 4) {
      std::size_t n = 0;
      unsigned value = 0;
      while (n < t.size() && n < 4 && t[n] >= '0' && t[n] <= '9') value = value * 10 + static_cast<unsigned>(t[n++] - '0');
      if (n == 0 || n > 3 || value > 255 || (n > 1 && t[0] == '0')) return false;
      to[parts++] = static_cast<std::uint8_t>(value);
      t.remove_prefix(n);
      if (parts < 4) {
        if (t.empty() || t[0] != '.') return false;
        t.remove_prefix(1);
      }
    }
    return t.empty();
  };
  resolved_address r;
  if (text.find(':') == std::string_view::npos) {
    if (!v4(text, r.bytes)) return false;
    r.family = ip_family::v4;
    out = r;
    return true;
  }
  // IPv6: groups before "::" fill from the front, those after it from the back.
  std::uint8_t head[16] = {}, tail[16] = {};
  std::size_t head_n = 0, tail_n = 0;
  bool gap = false;
  std::string_view t = text;
  if (t.substr(0, 2) == "::") {
    gap = true;
    t.remove_prefix(2);
  } else if (!t.empty() && t[0] == ':') {
    return false;
  }
  while (!t.empty()) {
    std::uint8_t* to = gap ? tail : head;
    std::size_t& n = gap ? tail_n : head_n;
    std::size_t end = t.find(':');
    std::string_view group = t.substr(0, end);
    if (group.find('.') != std::string_view::npos) {  // an IPv4 tail ends the address
      if (end != std::string_view::npos || n + 4 > 16 || !v4(group, to + n)) return false;
      n += 4;
      break;
    }
    if (group.empty() || group.size() > 4 || n + 2 > 16) return false;
    unsigned value = 0;
    for (char c : group) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      value = value * 16 + static_cast<unsigned>(d);
    }
    to[n++] = static_cast<std::uint8_t>(value >> 8);
    to[n++] = static_cast<std::uint8_t>(value & 0xff);
    if (end == std::string_view::npos) break;
    t.remove_prefix(end + 1);
    if (!t.empty() && t[0] == ':') {
      if (gap) return false;  // "::" twice
      gap = true;
      t.remove_prefix(1);
    } else if (t.empty()) {
      return false;  // a trailing single ':'
    }
  }
  if (gap ? head_n + tail_n > 14 : head_n != 16) return false;
  std::memcpy(r.bytes, head, head_n);
  std::memcpy(r.bytes + 16 - tail_n, tail, tail_n);
  r.family = ip_family::v6;
  out = r;
  return true;
}

// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket reports for
// an IPv4 peer) as the IPv4 address it stands for; any other address as it is.
inline resolved_address unmapped(const resolved_address& a) noexcept {
  static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a.family != ip_family::v6 || std::memcmp(a.bytes, mapped, 12) != 0) return a;
  return resolved_address::v4(a.bytes[12], a.bytes[13], a.bytes[14], a.bytes[15], a.port);
}

// An address block, "10.0.0.0/8" or "fd00::/8"; a bare address is one host (/32, /128).
struct cidr {
  resolved_address base;  // with the host bits cleared
  int prefix = 0;

  // Whether `a` (its host; the port is ignored) is in the block. An IPv4 block also
  // holds the IPv4-mapped IPv6 form (::ffff:a.b.c.d) that a dual-stack socket reports.
  bool contains(const resolved_address& a) const noexcept {
    resolved_address plain = base.family == ip_family::v4 ? unmapped(a) : a;
    const std::uint8_t* bytes = plain.bytes;
    if (plain.family != base.family) return false;
    for (int bit = 0; bit < prefix; bit += 8) {
      int keep = prefix - bit >= 8 ? 8 : prefix - bit;
      std::uint8_t mask = static_cast<std::uint8_t>(0xff << (8 - keep));
      if ((bytes[bit / 8] & mask) != base.bytes[bit / 8]) return false;
    }
    return true;
  }
};

// Parses ADDRESS[/PREFIX]; false when it is not one (a host name, a prefix beyond
// the family's bits). Host bits set under the prefix are cleared.
inline bool parse_cidr(std::string_view text, cidr& out) noexcept {
  std::size_t slash = text.find('/');
  cidr c;
  if (!parse_ip(text.substr(0, slash), c.base)) return false;
  int bits = c.base.family == ip_family::v4 ? 32 : 128;
  c.prefix = bits;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return false;
    int value = 0;
    for (char ch : p) {
      if (ch < '0' || ch > '9') return false;
      value = value * 10 + (ch - '0');
    }
    if (value > bits) return false;
    c.prefix = value;
  }
  for (int i = 0; i < bits / 8; ++i) {
    int keep = c.prefix - 8 * i;
    keep = keep < 0 ? 0 : keep > 8 ? 8 : keep;
    c.base.bytes[i] = static_cast<std::uint8_t>(c.base.bytes[i] & (0xff << (8 - keep)));
  }
  out = c;
  return true;
}

inline bool is_cidr(std::string_view text) noexcept {
  cidr c;
  return parse_cidr(text, c);
}

// Whether `a` is in any of `blocks` (CIDR texts; one that does not parse holds nothing).
inline bool in_any_cidr(const std::vector<std::string>& blocks, const resolved_address& a) noexcept {
  for (const std::string& text : blocks) {
    cidr c;
    if (parse_cidr(text, c) && c.contains(a)) return true;
  }
  return false;
}

}  // namespace detail
}  // namespace harmony
