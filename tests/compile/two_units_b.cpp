// The declarations-only unit of two_units_a.cpp. On Windows it also checks that
// nothing of <windows.h> reached it: its min/max macros would break std::min.
#include "../../harmony.hpp"

#if defined(_WINDOWS_) || defined(WINAPI) || defined(min) || defined(max) || defined(INVALID_SOCKET)
#error "the public half of harmony.hpp leaked <windows.h>"
#endif

int unit_b() {
  harmony::server s;
  return static_cast<int>(s.backends().size());
}
