// Two units compile the implementation in header-only mode and link together (ODR).
#include "../../harmony.hpp"
int unit_b();
int main() {
  harmony::endpoint ep;
  return (harmony::parse_endpoint("127.0.0.1:1", ep) || unit_b() != 2) ? 1 : 0;
}
