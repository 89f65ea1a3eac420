// A program built against an installed (or add_subdirectory'd) harmony: it parses an
// address, starts a server on a port of the system's choice, and stops it.
#define HARMONY_IMPLEMENTATION
#include <harmony.hpp>

#include <cstdio>

int main() {
  harmony::endpoint ep;
  if (harmony::parse_endpoint("[::1]:3000", ep) || ep.port != 3000 || HARMONY_VERSION < 100) return 1;
  harmony::server_options options;
  options.listen = "127.0.0.1:0";
  options.admin = "";  // no admin port
  harmony::server balancer(options);
  if (std::error_code e = balancer.start()) {
    std::fprintf(stderr, "consumer: cannot start: %s\n", e.message().c_str());
    return 1;
  }
  harmony::endpoint bound = balancer.listen_endpoint();
  balancer.stop();
  if (bound.port == 0) return 1;
  std::printf("consumer: harmony %d listened on %s\n", HARMONY_VERSION, bound.to_string().c_str());
  return 0;
}
