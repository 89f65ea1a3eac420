namespace harmony {
namespace detail {

// >>dns  sans-IO DNS messages: SRV queries, their answers, resolv.conf, SRV records to backends
// SRV records (RFC 2782) need a DNS query of their own: getaddrinfo has no SRV,
// and res_query lives in libresolv on most systems (a dependency the header does
// not take). The resolver thread sends these queries over UDP (TCP when the answer
// is truncated) to the configured name servers, or those of /etc/resolv.conf.
// Everything here is bytes in, values out; it is fuzzed (make fuzz).
inline constexpr std::uint16_t dns_type_a = 1;
inline constexpr std::uint16_t dns_type_aaaa = 28;
inline constexpr std::uint16_t dns_type_srv = 33;
inline constexpr std::uint16_t dns_class_in = 1;
inline constexpr std::size_t dns_max_name = 253;  // in text, without the final dot

struct srv_record {
  std::uint16_t priority = 0;
  std::uint16_t weight = 0;
  std::uint16_t port = 0;
  std::string target;  // canonical (see dns_canonical); "" for "." (no service here)
};
struct dns_address_record {
  std::string name;  // canonical
  resolved_address address;
};
struct dns_answer {
  int rcode = 0;           // 0 no error, 3 no such name, …
  bool truncated = false;  // the TC bit: ask again over TCP
  std::vector<srv_record> services;
  std::vector<dns_address_record> addresses;  // A and AAAA records, of any section
};

// Names compare without regard to case or a final dot.
inline std::string dns_canonical(std::string_view name) {
  std::string out(name);
  if (!out.empty() && out.back() == '.') out.pop_back();
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// Whether `name` can be queried: dot-separated labels of 1 to 63 printable bytes
// (no spaces), 253 bytes at most.
inline bool dns_valid_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > dns_max_name) return false;
  std::size_t label = 0;
  for (char ch : name) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (c <= ' ' || c >= 0x7f || ++label > 63) return false;
  }
  return label > 0;
}

// An SRV name is how add_backend_name tells a service from a host: its first
// label starts with an underscore (_service._tcp.example.com), and it has no port.
inline bool is_srv_name(std::string_view text) {
  return text.size() > 1 && text[0] == '_' && text.find(':') == std::string_view::npos && dns_valid_name(text);
}

// A standard query with recursion desired. False for a name dns_valid_name refuses.
inline bool dns_encode_query(std::uint16_t id, std::string_view name, std::uint16_t type, std::string& out) {
  if (!dns_valid_name(name)) return false;
  if (name.back() == '.') name.remove_suffix(1);
  auto put16 = [&](std::uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xff));
  };
  out.clear();
  put16(id);
  put16(0x0100);  // RD
  put16(1);       // one question
  put16(0);
  put16(0);
  put16(0);
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) dot = name.size();
    out.push_back(static_cast<char>(dot - start));
    out.append(name.data() + start, dot - start);
    start = dot + 1;
  }
  out.push_back('\0');
  put16(type);
  put16(dns_class_in);
  return true;
}

// Reads the (possibly compressed) name at `at` and moves `at` past it. Pointers
// must point backwards, so a message cannot make it loop.
inline bool dns_read_name(std::string_view m, std::size_t& at, std::string& out) {
  out.clear();
  std::size_t pos = at;
  std::size_t limit = at;  // a pointer must point before this
  bool jumped = false;
  for (;;) {
    if (pos >= m.size()) return false;
    auto len = static_cast<unsigned char>(m[pos]);
    if ((len & 0xc0) == 0xc0) {
      if (pos + 1 >= m.size()) return false;
      std::size_t target = (static_cast<std::size_t>(len & 0x3f) << 8) | static_cast<unsigned char>(m[pos + 1]);
      if (target >= limit) return false;
      if (!jumped) at = pos + 2;
      jumped = true;
      limit = target;
      pos = target;
      continue;
    }
    if (len & 0xc0) return false;  // the reserved label types
    if (len == 0) {
      if (!jumped) at = pos + 1;
      break;
    }
    if (pos + 1 + len > m.size()) return false;
    if (!out.empty()) out.push_back('.');
    for (std::size_t i = 0; i < len; ++i) {
      char c = m[pos + 1 + i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c == '.' || static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7f) return false;
      out.push_back(c);
    }
    if (out.size() > dns_max_name) return false;
    pos += 1 + len;
  }
  return true;
}

// Decodes the answer to the query (id, name, type) dns_encode_query made: its SRV
// records for `name` and every A/AAAA record it carries. errc::resolve_failed for a
// message that is not that answer or does not parse; a DNS error is in rcode.
inline std::error_code dns_decode_answer(std::string_view m, std::uint16_t id, std::string_view name,
                                         std::uint16_t type, dns_answer& out) {
  out = dns_answer{};
  const std::error_code bad = make_error_code(errc::resolve_failed);
  auto get16 = [&](std::size_t at) {
    return static_cast<std::uint16_t>((static_cast<unsigned char>(m[at]) << 8) | static_cast<unsigned char>(m[at + 1]));
  };
  if (m.size() < 12 || get16(0) != id) return bad;
  std::uint16_t flags = get16(2);
  if (!(flags & 0x8000) || (flags & 0x7800)) return bad;  // not a response, or not to a standard query
  out.truncated = (flags & 0x0200) != 0;
  out.rcode = flags & 0x000f;
  std::size_t questions = get16(4);
  std::size_t records = std::size_t{get16(6)} + get16(8) + get16(10);
  std::size_t at = 12;
  std::string owner;
  std::string want = dns_canonical(name);
  if (questions != 1) return bad;
  if (!dns_read_name(m, at, owner) || owner != want || at + 4 > m.size()) return bad;
  if (get16(at) != type || get16(at + 2) != dns_class_in) return bad;
  at += 4;
  for (std::size_t i = 0; i < records; ++i) {
    if (!dns_read_name(m, at, owner) || at + 10 > m.size()) return out.truncated ? std::error_code{} : bad;
    std::uint16_t rtype = get16(at);
    std::uint16_t rclass = get16(at + 2);
    std::size_t length = get16(at + 8);
    at += 10;
    if (at + length > m.size()) return out.truncated ? std::error_code{} : bad;
    std::size_t end = at + length;
    if (rclass == dns_class_in) {
      if (rtype == dns_type_srv && owner == want && length >= 7) {
        srv_record s;
        s.priority = get16(at);
        s.weight = get16(at + 2);
        s.port = get16(at + 4);
        std::size_t t = at + 6;
        if (!dns_read_name(m, t, s.target) || t != end) return bad;
        out.services.push_back(std::move(s));
      } else if (rtype == dns_type_a && length == 4) {
        out.addresses.push_back(dns_address_record{owner, {}});
        resolved_address& a = out.addresses.back().address;
        a.family = ip_family::v4;
        std::memcpy(a.bytes, m.data() + at, 4);
      } else if (rtype == dns_type_aaaa && length == 16) {
        out.addresses.push_back(dns_address_record{owner, {}});
        resolved_address& a = out.addresses.back().address;
        a.family = ip_family::v6;
        std::memcpy(a.bytes, m.data() + at, 16);
      }
    }
    at = end;
  }
  return {};
}

// The name servers of a resolv.conf: its `nameserver ADDRESS` lines, port 53.
inline std::vector<endpoint> parse_resolv_conf(std::string_view text) {
  std::vector<endpoint> out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    auto word = [&](std::string_view& rest) {
      std::size_t b = rest.find_first_not_of(" \t\r");
      if (b == std::string_view::npos) return std::string_view();
      std::size_t e = rest.find_first_of(" \t\r", b);
      if (e == std::string_view::npos) e = rest.size();
      std::string_view w = rest.substr(b, e - b);
      rest.remove_prefix(e);
      return w;
    };
    if (word(line) != "nameserver") continue;
    std::string_view host = word(line);
    std::size_t percent = host.find('%');  // a link-local scope: not ours to follow
    if (!host.empty() && percent == std::string_view::npos) out.push_back(endpoint{std::string(host), dns_port});
  }
  return out;
}

// What an SRV answer makes of a name's backends: every address of every target,
// at the record's port. The records of the lowest priority are the primaries and
// the others backups (a client tries the lowest first, RFC 2782); a record's
// weight is the backend's (0 counts as the least weight, and when every record
// of the answer says 0 each gets the default). A target the answer carries no
// address for is looked up by `resolve_target` (getaddrinfo); "." and port 0
// are not a service.
template <class Resolve>
std::error_code srv_backends(const dns_answer& answer, Resolve&& resolve_target, std::vector<discovered_address>& out) {
  out.clear();
  bool any_weight = false;
  std::uint16_t lowest = 0xffff;
  for (const srv_record& s : answer.services) {
    if (s.target.empty() || s.port == 0) continue;
    any_weight = any_weight || s.weight > 0;
    lowest = std::min(lowest, s.priority);
  }
  for (const srv_record& s : answer.services) {
    if (s.target.empty() || s.port == 0) continue;
    int weight = any_weight ? std::max<int>(s.weight, min_weight) : default_weight;
    std::vector<resolved_address> hosts;
    for (const dns_address_record& a : answer.addresses)
      if (a.name == s.target) hosts.push_back(a.address);
    if (hosts.empty()) resolve_target(endpoint{s.target, s.port}, hosts);
    for (const resolved_address& h : hosts)
      out.push_back(discovered_address{h.with_port(s.port), weight, s.priority != lowest});
  }
  return out.empty() ? make_error_code(errc::resolve_failed) : std::error_code{};
}

}  // namespace detail
}  // namespace harmony
