// The implementation after a plain <windows.h> (no
// WIN32_LEAN_AND_MEAN), the order many Windows programs use.
#if defined(_WIN32)
#include <windows.h>
#endif
#define HARMONY_IMPLEMENTATION
#include "../../harmony.hpp"

#include <algorithm>

// std::min and std::max still work: the header defined no min/max macros.
int windows_first_check() {
  harmony::server_options o;
  harmony::server s(o);
  return std::min(1, 2) + std::max(0, static_cast<int>(s.backends().size()));
}
