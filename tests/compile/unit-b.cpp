// Compile check, second translation unit: it sees the public half only, which
// must name no OS type and bring in none of the OS headers' macros.
#include "../../harmony.hpp"

#if !defined(HARMONY_HEADER_ONLY)
#if defined(_WINSOCK2API_) || defined(_WINDOWS_) || defined(WINAPI) || defined(min) || defined(max) || \
    defined(INVALID_SOCKET) || defined(AF_INET)
#error "the public half of harmony.hpp leaked OS headers"
#endif
#endif

int unit_b() {
  harmony::server s;
  harmony::duration d{};
  return harmony::parse_duration("5s", d) ? 1 : static_cast<int>(s.backends().size());
}
