#define HARMONY_IMPLEMENTATION
#include <harmony.hpp>
int main() {
  harmony::endpoint ep;
  return harmony::parse_endpoint("[::1]:3000", ep) || ep.port != 3000 || HARMONY_VERSION < 100;
}
