namespace harmony {
namespace detail {

// >>proxy-header  sans-IO PROXY protocol v1 and v2 headers: written towards backends, read from upstream
// The PROXY protocol (HAProxy's proxy-protocol.txt) puts the client's and the
// proxy's addresses in front of a connection's first byte, so that whoever is
// behind a TCP proxy still sees who the client is. Version 1 is one text line of
// at most 107 bytes; version 2 a 16-byte binary header and an address block.

// The two ends a header describes: `source` is the client, `destination` where it
// connected. `local` (v2 LOCAL, v1 UNKNOWN): the sender speaks for itself, the
// receiver keeps the connection's own addresses.
struct proxy_addresses {
  resolved_address source;
  resolved_address destination;
  bool local = false;
};

inline constexpr char proxy_v2_signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};
inline constexpr std::size_t proxy_v2_fixed = 16;      // signature, version/command, family, length
inline constexpr std::size_t proxy_header_max = proxy_v2_fixed + 0xffff;

// Text of an address, as a v1 line carries it: dotted quad, or RFC 5952 IPv6
// (lower-case hex, the longest run of two or more zero groups as "::").
inline std::string address_text(const resolved_address& a) {
  std::string out;
  if (a.family == ip_family::v4) {
    for (int i = 0; i < 4; ++i) {
      if (i) out.push_back('.');
      out += std::to_string(a.bytes[i]);
    }
    return out;
  }
  if (a.family != ip_family::v6) return out;
  unsigned groups[8];
  for (int i = 0; i < 8; ++i) groups[i] = (unsigned{a.bytes[2 * i]} << 8) | a.bytes[2 * i + 1];
  int best = -1, best_length = 0;
  for (int i = 0; i < 8;) {
    if (groups[i] != 0) {
      ++i;
      continue;
    }
    int j = i;
    while (j < 8 && groups[j] == 0) ++j;
    if (j - i > best_length && j - i >= 2) best = i, best_length = j - i;
    i = j;
  }
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; ++i) {
    if (i == best) {
      out += "::";
      i += best_length - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out.push_back(':');
    bool started = false;
    for (int shift = 12; shift >= 0; shift -= 4) {
      unsigned digit = (groups[i] >> shift) & 15;
      if (digit || started || shift == 0) {
        out.push_back(hex[digit]);
        started = true;
      }
    }
  }
  return out;
}

// Parses a dotted quad (exactly four decimal parts of 0-255, no leading zeros
// beyond "0") or an IPv6 address (with "::" and an embedded dotted quad).
inline bool parse_address_text(std::string_view text, resolved_address& out) {
  auto parse_v4 = [](std::string_view t, std::uint8_t* into) {
    int part = 0;
    std::size_t i = 0;
    while (part < 4) {
      std::size_t start = i;
      unsigned value = 0;
      while (i < t.size() && t[i] >= '0' && t[i] <= '9' && i - start < 3) value = value * 10 + unsigned(t[i++] - '0');
      if (i == start || value > 255 || (i - start > 1 && t[start] == '0')) return false;
      into[part++] = static_cast<std::uint8_t>(value);
      if (part < 4) {
        if (i >= t.size() || t[i] != '.') return false;
        ++i;
      }
    }
    return i == t.size();
  };
  out = resolved_address{};
  if (text.find(':') == std::string_view::npos) {
    if (!parse_v4(text, out.bytes)) return false;
    out.family = ip_family::v4;
    return true;
  }
  if (text.size() > 45) return false;
  std::uint8_t bytes[16] = {};
  int filled = 0, gap = -1;
  std::size_t i = 0;
  if (text.substr(0, 2) == "::") {
    gap = 0;
    i = 2;
  } else if (text[0] == ':') {
    return false;
  }
  while (i < text.size()) {
    std::size_t end = text.find(':', i);
    std::string_view piece = text.substr(i, end == std::string_view::npos ? std::string_view::npos : end - i);
    if (piece.find('.') != std::string_view::npos) {  // the last 32 bits as a dotted quad
      if (end != std::string_view::npos || filled > 12 || !parse_v4(piece, bytes + filled)) return false;
      filled += 4;
      i = text.size();
      break;
    }
    if (piece.empty() || piece.size() > 4 || filled >= 16) return false;
    unsigned value = 0;
    for (char c : piece) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      value = value * 16 + unsigned(d);
    }
    bytes[filled++] = static_cast<std::uint8_t>(value >> 8);
    bytes[filled++] = static_cast<std::uint8_t>(value & 0xff);
    if (end == std::string_view::npos) {
      i = text.size();
      break;
    }
    i = end + 1;
    if (i < text.size() && text[i] == ':') {
      if (gap >= 0) return false;  // a second "::"
      gap = filled;
      ++i;
    } else if (i == text.size()) {
      return false;  // a trailing single ':'
    }
  }
  if (gap < 0 ? filled != 16 : filled > 14) return false;
  out.family = ip_family::v6;
  if (gap < 0) {
    std::memcpy(out.bytes, bytes, 16);
  } else {
    std::memcpy(out.bytes, bytes, static_cast<std::size_t>(gap));
    std::size_t tail = static_cast<std::size_t>(filled - gap);
    std::memcpy(out.bytes + 16 - tail, bytes + gap, tail);
  }
  return true;
}

// The header for a connection from `a.source` to `a.destination`. Addresses a
// header cannot carry (two families that differ, none known) are written as v1
// UNKNOWN and v2 UNSPEC: the receiver then keeps the connection's own.
inline std::string encode_proxy_header(proxy_protocol v, const proxy_addresses& a) {
  bool same = a.source.family == a.destination.family && a.source.family != ip_family::none && !a.local;
  if (v == proxy_protocol::v1) {
    if (!same) return "PROXY UNKNOWN\r\n";
    return std::string("PROXY ") + (a.source.family == ip_family::v4 ? "TCP4 " : "TCP6 ") + address_text(a.source) +
           " " + address_text(a.destination) + " " + std::to_string(a.source.port) + " " +
           std::to_string(a.destination.port) + "\r\n";
  }
  if (v != proxy_protocol::v2) return {};
  std::string out(proxy_v2_signature, sizeof proxy_v2_signature);
  out.push_back(static_cast<char>(a.local ? 0x20 : 0x21));  // version 2, LOCAL or PROXY
  if (!same) {
    out.push_back('\0');  // UNSPEC
    out.append(2, '\0');
    return out;
  }
  bool v4 = a.source.family == ip_family::v4;
  std::size_t n = v4 ? 4 : 16;
  out.push_back(static_cast<char>(v4 ? 0x11 : 0x21));  // INET or INET6, STREAM
  std::size_t length = 2 * n + 4;
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length & 0xff));
  out.append(reinterpret_cast<const char*>(a.source.bytes), n);
  out.append(reinterpret_cast<const char*>(a.destination.bytes), n);
  for (std::uint16_t port : {a.source.port, a.destination.port}) {
    out.push_back(static_cast<char>(port >> 8));
    out.push_back(static_cast<char>(port & 0xff));
  }
  return out;
}

// What the first bytes of a connection from an upstream proxy say.
struct proxy_parse {
  enum class status { incomplete, done, invalid };
  status result = status::incomplete;
  std::size_t consumed = 0;  // with done: the header's length; the stream's data follows it
  proxy_protocol version = proxy_protocol::none;
  proxy_addresses addresses;
  const char* why = "";  // with invalid: what is wrong, for the log
};

// Reads a v1 or v2 header from the start of `bytes` (what has arrived so far).
// incomplete: read more (never past proxy_header_max); invalid: not a header,
// or a malformed one: refuse the connection.
inline proxy_parse parse_proxy_header(std::string_view bytes) {
  proxy_parse p;
  auto fail = [&](const char* why) {
    p.result = proxy_parse::status::invalid;
    p.why = why;
    return p;
  };
  std::string_view sig(proxy_v2_signature, sizeof proxy_v2_signature);
  std::size_t prefix = std::min(bytes.size(), sig.size());
  if (bytes.substr(0, prefix) == sig.substr(0, prefix)) {
    if (bytes.size() < proxy_v2_fixed) return p;
    auto b = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
    if ((b(12) >> 4) != 2) return fail("PROXY v2: not version 2");
    unsigned command = b(12) & 15;
    if (command > 1) return fail("PROXY v2: unknown command");
    std::size_t length = (std::size_t{b(14)} << 8) | b(15);
    if (bytes.size() < proxy_v2_fixed + length) return p;
    p.version = proxy_protocol::v2;
    p.consumed = proxy_v2_fixed + length;
    p.result = proxy_parse::status::done;
    unsigned family = b(13) >> 4, transport = b(13) & 15;
    if (family > 3 || transport > 2) return fail("PROXY v2: unknown address family or transport");
    if (command == 0 || family == 0 || family == 3) {  // LOCAL, UNSPEC, UNIX: the connection's own addresses
      p.addresses.local = true;
      return p;
    }
    std::size_t n = family == 1 ? 4 : 16;
    if (length < 2 * n + 4) return fail("PROXY v2: address block too short");
    ip_family f = family == 1 ? ip_family::v4 : ip_family::v6;
    p.addresses.source.family = p.addresses.destination.family = f;
    std::memcpy(p.addresses.source.bytes, bytes.data() + 16, n);
    std::memcpy(p.addresses.destination.bytes, bytes.data() + 16 + n, n);
    p.addresses.source.port = static_cast<std::uint16_t>((b(16 + 2 * n) << 8) | b(17 + 2 * n));
    p.addresses.destination.port = static_cast<std::uint16_t>((b(18 + 2 * n) << 8) | b(19 + 2 * n));
    return p;  // TLVs after the addresses are skipped with the rest of `length`
  }
  std::string_view v1 = "PROXY ";
  prefix = std::min(bytes.size(), v1.size());
  if (bytes.substr(0, prefix) != v1.substr(0, prefix)) return fail("no PROXY header");
  std::size_t end = bytes.find("\r\n");
  if (end == std::string_view::npos) {
    if (bytes.size() >= proxy_v1_max) return fail("PROXY v1: no CRLF within 107 bytes");
    return p;
  }
  if (end + 2 > proxy_v1_max) return fail("PROXY v1: longer than 107 bytes");
  p.version = proxy_protocol::v1;
  p.consumed = end + 2;
  p.result = proxy_parse::status::done;
  std::string_view line = bytes.substr(6, end - 6);
  std::string_view fields[5];
  std::size_t count = 0;
  while (!line.empty() && count < 5) {
    std::size_t space = line.find(' ');
    fields[count++] = line.substr(0, space);
    line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  }
  if (count >= 1 && fields[0] == "UNKNOWN") {  // anything may follow, up to the CRLF
    p.addresses.local = true;
    return p;
  }
  if (count != 5 || !line.empty() || (fields[0] != "TCP4" && fields[0] != "TCP6"))
    return fail("PROXY v1: not TCP4/TCP6 with two addresses and two ports");
  ip_family f = fields[0] == "TCP4" ? ip_family::v4 : ip_family::v6;
  if (!parse_address_text(fields[1], p.addresses.source) || !parse_address_text(fields[2], p.addresses.destination) ||
      p.addresses.source.family != f || p.addresses.destination.family != f)
    return fail("PROXY v1: a malformed address");
  std::uint16_t* ports[2] = {&p.addresses.source.port, &p.addresses.destination.port};
  for (int i = 0; i < 2; ++i) {
    std::string_view t = fields[3 + i];
    unsigned value = 0;
    if (t.empty() || t.size() > 5 || (t.size() > 1 && t[0] == '0')) return fail("PROXY v1: a malformed port");
    for (char c : t) {
      if (c < '0' || c > '9') return fail("PROXY v1: a malformed port");
      value = value * 10 + unsigned(c - '0');
    }
    if (value > 65535) return fail("PROXY v1: a malformed port");
    *ports[i] = static_cast<std::uint16_t>(value);
  }
  return p;
}

}  // namespace detail
}  // namespace harmony
