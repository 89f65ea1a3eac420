// Two units linked together: this one compiles the implementation, the other
// (two_units_b.cpp) sees only the public half.
#define HARMONY_IMPLEMENTATION
#include "../../harmony.hpp"

int unit_b();

int main() {
  harmony::endpoint ep;
  return (harmony::parse_endpoint("127.0.0.1:1", ep) || unit_b() != 0) ? 1 : 0;
}
