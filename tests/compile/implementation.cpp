// The implementation unit alone: compiled with each backend, and with
// -fno-exceptions -fno-rtti, by tests/compile/run.
#define HARMONY_IMPLEMENTATION
#include "../../harmony.hpp"
int main() {
  harmony::server s;
  harmony::client c;
  return s.listen_endpoint().port;
}
