// Compile check, first of two translation units linked together: this one holds
// the implementation (or, with HARMONY_HEADER_ONLY, both do, as inline code).
#if !defined(HARMONY_HEADER_ONLY)
#define HARMONY_IMPLEMENTATION
#endif
#include "../../harmony.hpp"

int unit_b();

int unit_a() {
  harmony::endpoint ep;
  return harmony::parse_endpoint("127.0.0.1:1", ep) ? 1 : 0;
}

int main() { return unit_a() + unit_b(); }
