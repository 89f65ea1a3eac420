namespace harmony {
namespace detail {

// >>os-address  the portable resolved address to and from the OS socket address
// The only place that converts between resolved_address (>>net-address) and the
// sockaddr the OS takes: the platform layer calls these at its edge.
inline resolved_address to_resolved(const address& a) noexcept {
  resolved_address r;
  if (a.family() == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&a.storage);
    r.family = ip_family::v4;
    std::memcpy(r.bytes, &in->sin_addr, 4);
    r.port = ntohs(in->sin_port);
  } else if (a.family() == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
    r.family = ip_family::v6;
    std::memcpy(r.bytes, &in6->sin6_addr, 16);
    r.port = ntohs(in6->sin6_port);
    r.scope = in6->sin6_scope_id;
  }
  return r;
}

inline address to_os_address(const resolved_address& r) noexcept {
  address a;
  if (r.family == ip_family::v4) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
    in->sin_family = AF_INET;
    std::memcpy(&in->sin_addr, r.bytes, 4);
    in->sin_port = htons(r.port);
    a.length = static_cast<socklen_t>(sizeof(sockaddr_in));
  } else if (r.family == ip_family::v6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    in6->sin6_family = AF_INET6;
    std::memcpy(&in6->sin6_addr, r.bytes, 16);
    in6->sin6_port = htons(r.port);
    in6->sin6_scope_id = r.scope;
    a.length = static_cast<socklen_t>(sizeof(sockaddr_in6));
  }
  return a;
}

// Resolves a host and port into the portable form.
inline std::error_code resolve(const endpoint& ep, resolved_address& out) {
  address a;
  if (auto e = resolve(ep, a, false)) return e;
  out = to_resolved(a);
  return out.valid() ? std::error_code{} : make_error_code(errc::resolve_failed);
}

}  // namespace detail
}  // namespace harmony
