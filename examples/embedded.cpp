// The smallest embedding: a balancer over static backends given on the command
// line, running on the calling thread until interrupted.
//   embedded 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"

#include <csignal>
#include <cstdio>

static harmony::server* running = nullptr;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s LISTEN BACKEND [BACKEND...]\n", argv[0]);
    return 2;
  }
  harmony::server_options options;
  options.listen = argv[1];
  options.admin = "";  // static backends only
  options.log = [](harmony::log_level, std::string_view m) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(m.size()), m.data());
  };
  harmony::server balancer(options);
  for (int i = 2; i < argc; ++i)
    if (auto e = balancer.add_backend(argv[i], 500)) {
      std::fprintf(stderr, "%s: %s\n", argv[i], e.message().c_str());
      return 2;
    }
  running = &balancer;
  std::signal(SIGINT, [](int) { running->stop(); });  // stop() only posts to the loop
  auto e = balancer.run();
  if (e) std::fprintf(stderr, "%s\n", e.message().c_str());
  return e ? 1 : 0;
}
