// The harmony.js example, in C++: one process with a balancer, two agents
// weighted 1000 and 500, and two tiny HTTP backends. The first backend closes
// its agent on its first request; after that only the second one serves.
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"
#include "tiny_http.hpp"

#include <chrono>
#include <cstdio>
#include <memory>

int main() {
  if (!sockets_ready()) return 1;
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  harmony::server_options options;
  options.listen = "127.0.0.1:0";  // any free port: the demo must not collide with anything
  options.admin = "127.0.0.1:0";
  options.persistent = false;      // one client address: let the weights show
  options.unavailable = "HTTP/1.0 503 Service Unavailable\r\n\r\nno backend\n";
  harmony::server balancer(options);
  if (auto e = balancer.start()) {
    std::fprintf(stderr, "cannot start the balancer: %s\n", e.message().c_str());
    return 1;
  }
  std::printf("balancer listening on %s, admin port %s\n", balancer.listen_endpoint().to_string().c_str(),
              balancer.admin_endpoint().to_string().c_str());

  std::unique_ptr<harmony::client> agent1;
  tiny_http_server backend1("hello from backend 1 (weight 1000)\n", [&] {
    static bool first = true;
    if (first) {
      first = false;
      std::printf("  backend 1: first request, closing my agent\n");
      agent1->close();
    }
  });
  tiny_http_server backend2("hello from backend 2 (weight 500)\n");

  harmony::client_options agent;
  agent.balancer = balancer.admin_endpoint().to_string();
  agent.port = backend1.port();
  agent.weight = 1000;
  agent1 = std::make_unique<harmony::client>(agent);
  agent.port = backend2.port();
  agent.weight = 500;
  harmony::client agent2(agent);
  agent1->start();
  agent2.start();
  for (int i = 0; i < 200 && !(agent1->registered() && agent2.registered()); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::printf("agents registered: %s (1000), %s (500)\n", agent1->id().c_str(), agent2.id().c_str());

  bool as_expected = true;
  for (int i = 1; i <= 6; ++i) {
    std::string body = tiny_http_get(balancer.listen_endpoint().port);
    std::printf("request %d -> %s", i, body.c_str());
    as_expected = as_expected && body.find(i == 1 ? "backend 1" : "backend 2") != std::string::npos;
  }
  for (const auto& b : balancer.backends())
    std::printf("backend %s at %s: weight %d, %llu connections, %s\n", b.id.c_str(), b.address.to_string().c_str(),
                b.weight, static_cast<unsigned long long>(b.total), b.state.c_str());
  agent2.close();
  balancer.stop();
  // As in harmony.js: the first request reaches backend 1, every later one backend 2.
  return as_expected ? 0 : 1;
}
