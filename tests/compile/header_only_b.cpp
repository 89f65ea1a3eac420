#include "../../harmony.hpp"
int unit_b() {
  harmony::duration d{};
  return harmony::parse_duration("2ms", d) ? 0 : static_cast<int>(d.count());
}
