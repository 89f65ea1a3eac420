// A tiny HTTP backend for the multi-host example: answers every request with
// its name. Usage: backend PORT NAME (runs until killed).
#include "tiny_http.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc != 3 || !sockets_ready()) {
    std::fprintf(stderr, "usage: %s PORT NAME\n", argv[0]);
    return 2;
  }
  tiny_http_server server(std::string(argv[2]) + "\n", {}, static_cast<std::uint16_t>(std::atoi(argv[1])));
  if (server.port() == 0) {
    std::fprintf(stderr, "%s: cannot listen on port %s\n", argv[0], argv[1]);
    return 1;
  }
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}
