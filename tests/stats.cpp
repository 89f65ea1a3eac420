// The stats port over real sockets: /metrics parses as the Prometheus text
// format and counts what the balancer did, /status.json, the status page and
// its refresh in headless Chromium (where the machine has it), bad requests.
#include "support.hpp"

#include <cstdio>

using namespace test;

namespace {
struct http_reply {
  int status = 0;
  std::string headers;
  std::string body;
};

http_reply http_exchange(const harmony::endpoint& at, const std::string& request) {
  http_reply r;
  sock c = connect_to(at);
  REQUIRE(c);
  c.set_timeout(5s);
  REQUIRE(c.send_all(request));
  std::string all = c.read_all();
  std::size_t head = all.find("\r\n\r\n");
  if (head == std::string::npos || all.compare(0, 9, "HTTP/1.1 ") != 0) return r;
  r.status = std::atoi(all.c_str() + 9);
  r.headers = all.substr(0, head);
  r.body = all.substr(head + 4);
  return r;
}
http_reply http_get(const harmony::endpoint& at, const char* path) {
  return http_exchange(at, std::string("GET ") + path + " HTTP/1.1\r\nHost: test\r\n\r\n");
}

// A strict reader of the Prometheus text format (0.0.4): every sample belongs to
// a family announced by HELP and TYPE lines just before it, names and label
// names are valid, label values are quoted with escapes, values are numbers.
// The samples, by "name{labels}".
std::map<std::string, double> parse_prometheus(const std::string& text) {
  std::map<std::string, double> samples;
  std::set<std::string> seen_families;
  std::string family, type;
  bool has_help = false;
  auto valid_name = [](const std::string& n) {
    if (n.empty() || !(std::isalpha(static_cast<unsigned char>(n[0])) || n[0] == '_' || n[0] == ':')) return false;
    for (char c : n)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) return false;
    return true;
  };
  std::size_t start = 0;
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    std::string line = text.substr(start, end - start);
    start = end + 1;
    INFO(line);
    REQUIRE(!line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
      REQUIRE(valid_name(family));
      REQUIRE(seen_families.insert(family).second);  // one block per family
      has_help = true;
      type.clear();
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      REQUIRE(has_help);
      REQUIRE(line.substr(7, family.size() + 1) == family + " ");
      type = line.substr(8 + family.size());
      REQUIRE((type == "counter" || type == "gauge"));
      continue;
    }
    REQUIRE(line[0] != '#');
    std::size_t name_end = line.find_first_of("{ ");
    REQUIRE(name_end != std::string::npos);
    std::string name = line.substr(0, name_end);
    REQUIRE(name == family);
    REQUIRE(!type.empty());
    if (type == "counter") REQUIRE(name.size() > 6);
    if (type == "counter") CHECK(name.compare(name.size() - 6, 6, "_total") == 0);
    std::size_t at = name_end;
    if (line[at] == '{') {
      ++at;
      while (line[at] != '}') {
        std::size_t eq = line.find('=', at);
        REQUIRE(eq != std::string::npos);
        REQUIRE(valid_name(line.substr(at, eq - at)));
        REQUIRE(line[eq + 1] == '"');
        at = eq + 2;
        while (line[at] != '"') {
          REQUIRE(at < line.size());
          if (line[at] == '\\') {
            REQUIRE((line[at + 1] == '\\' || line[at + 1] == '"' || line[at + 1] == 'n'));
            ++at;
          }
          ++at;
        }
        ++at;
        if (line[at] == ',') ++at;
      }
      ++at;
    }
    REQUIRE(line[at] == ' ');
    std::string value = line.substr(at + 1);
    char* parsed_end = nullptr;
    double v = std::strtod(value.c_str(), &parsed_end);
    REQUIRE(parsed_end == value.c_str() + value.size());
    REQUIRE(samples.emplace(line.substr(0, at), v).second);  // no sample twice
  }
  return samples;
}

double backend_sample(const std::map<std::string, double>& samples, const std::string& name, const std::string& id) {
  for (const auto& [key, value] : samples)
    if (key.rfind(name + "{", 0) == 0 && key.find("backend=\"" + id + "\"") != std::string::npos) return value;
  return -1;
}
}  // namespace

TEST_CASE("stats port: /metrics is Prometheus text that counts the traffic; /status.json and / show the backends") {
  backend a(named("a")), b(named("b"));
  auto o = quiet_options();
  o.stats = "127.0.0.1:0";
  o.persistent = false;
  running_server s(o);
  std::string ida = s.add(a, 500), idb = s.add(b, 1000);
  harmony::endpoint at = s.srv.stats_endpoint();
  REQUIRE(at.port != 0);
  auto counts = tally(s.address(), 12);
  REQUIRE(counts["a"] + counts["b"] == 12);
  REQUIRE(eventually([&] { return s.srv.stats().active == 0; }));

  http_reply m = http_get(at, "/metrics");
  REQUIRE(m.status == 200);
  CHECK(m.headers.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
  auto samples = parse_prometheus(m.body);
  CHECK(samples["harmony_connections_accepted_total"] == 12);
  CHECK(samples["harmony_connections_active"] == 0);
  CHECK(samples["harmony_backends"] == 2);
  CHECK(samples["harmony_bytes_in_total"] == 12);  // one byte each: "x"
  CHECK(backend_sample(samples, "harmony_backend_weight", idb) == 1000);
  CHECK(backend_sample(samples, "harmony_backend_up", ida) == 1);
  CHECK(backend_sample(samples, "harmony_backend_connections_total", ida) == counts["a"]);
  CHECK(backend_sample(samples, "harmony_backend_connections_total", idb) == counts["b"]);
  CHECK(samples.count("harmony_uptime_seconds") == 1);
  // Per backend, the bytes of the connections it served: "x" in, "a:1" out.
  CHECK(backend_sample(samples, "harmony_backend_bytes_in_total", ida) == counts["a"]);
  CHECK(backend_sample(samples, "harmony_backend_bytes_out_total", ida) == 3 * counts["a"]);
  CHECK(backend_sample(samples, "harmony_backend_bytes_out_total", idb) == 3 * counts["b"]);
  CHECK(samples["harmony_bad_proxy_headers_total"] == 0);
  CHECK(m.body.find("# HELP harmony_connections_queued Client connections waiting in the wait queue: one queue for all backends") != std::string::npos);
#if defined(__linux__)
  CHECK(samples["process_open_fds"] > 3);
#endif

  // A drained backend is down in the metrics and draining in the JSON.
  REQUIRE_FALSE(s.srv.drain(ida));
  samples = parse_prometheus(http_get(at, "/metrics").body);
  CHECK(backend_sample(samples, "harmony_backend_up", ida) == 0);
  http_reply j = http_get(at, "/status.json");
  REQUIRE(j.status == 200);
  CHECK(j.headers.find("application/json") != std::string::npos);
  CHECK(j.body.find("\"id\":\"" + ida + "\"") != std::string::npos);
  CHECK(j.body.find("\"state\":\"draining\"") != std::string::npos);
  CHECK(j.body.find("\"accepted\":12") != std::string::npos);
  CHECK(j.body.find("\"bytes_out\":" + std::to_string(3 * counts["a"]) + ",\"proxy\":\"none\"") != std::string::npos);
  http_reply page = http_get(at, "/");
  REQUIRE(page.status == 200);
  CHECK(page.body.find("<!DOCTYPE html>") == 0);
  CHECK(page.body.find(a.address()) != std::string::npos);
  CHECK(page.body.find("http://") == std::string::npos);  // self-contained: no external asset
  CHECK(page.body.find("https://") == std::string::npos);
}

TEST_CASE("stats port: HEAD, unknown paths, other methods, malformed and oversized requests") {
  auto o = quiet_options();
  o.stats = "127.0.0.1:0";
  running_server s(o);
  harmony::endpoint at = s.srv.stats_endpoint();
  http_reply h = http_exchange(at, "HEAD /metrics HTTP/1.1\r\n\r\n");
  CHECK(h.status == 200);
  CHECK(h.body.empty());
  CHECK(h.headers.find("Content-Length: 0") == std::string::npos);  // the length of what GET sends
  CHECK(http_get(at, "/nothing").status == 404);
  CHECK(http_get(at, "/metrics?x=1").status == 200);
  CHECK(http_exchange(at, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status == 405);
  CHECK(http_exchange(at, "garbage\r\n\r\n").status == 400);
  CHECK(http_exchange(at, "GET /" + std::string(9000, 'x') + " HTTP/1.1\r\n\r\n").status == 400);
  // A client that sends half a request and stalls holds nothing up for others.
  sock stalled = connect_to(at);
  REQUIRE(stalled.send_all(std::string("GET /met")));
  CHECK(http_get(at, "/metrics").status == 200);
}

#if defined(__linux__)
namespace {
std::string find_chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (::access(p, X_OK) == 0) return p;
  return {};
}
std::string run_capture(const std::string& command) {
  std::string out;
  FILE* f = ::popen(command.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  ::pclose(f);
  return out;
}
}  // namespace

TEST_CASE("stats port: the status page renders in headless Chromium and refreshes itself from /status.json") {
  std::string chromium = find_chromium();
  if (chromium.empty()) SKIP_CASE("chromium is not installed (apt-get install chromium)");
  backend a(named("a")), b(named("b")), c(named("c"));
  auto o = quiet_options();
  o.stats = "127.0.0.1:0";
  o.persistent = false;
  running_server s(o);
  std::string id = s.add(a, 1000);
  s.add(b, 500);
  std::string drained = s.add(c, 500);
  tally(s.address(), 20);
  REQUIRE_FALSE(s.srv.drain(drained));
  harmony::endpoint at = s.srv.stats_endpoint();
  std::string profile = "/tmp/harmony-chromium-" + std::to_string(::getpid());
  std::string base = chromium + " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
                     "--user-data-dir=" + profile + " --virtual-time-budget=3000 ";
  std::string url = "http://" + at.to_string() + "/";
  // After the page's script ran, the table is its own rendering of /status.json.
  std::string dom = run_capture("timeout 60 " + base + "--dump-dom " + url + " 2>/dev/null");
  INFO(dom.substr(0, 2000));
  CHECK(dom.find("<tbody id=\"backends\">") != std::string::npos);
  CHECK(dom.find(a.address()) != std::string::npos);
  CHECK(dom.find(id.substr(0, 8)) != std::string::npos);
  CHECK(dom.find("class=\"s-up\">up<") != std::string::npos);
  CHECK(dom.find("class=\"s-draining\">draining<") != std::string::npos);
  CHECK(dom.find("<b id=\"accepted\">20</b>") != std::string::npos);
  CHECK(dom.find("<th>bytes in</th><th>bytes out</th>") != std::string::npos);
  CHECK(dom.find("<span id=\"updated\">at load</span>") == std::string::npos);  // refreshed in place
  CHECK(dom.find("<span id=\"updated\">unreachable</span>") == std::string::npos);
  if (const char* shot = std::getenv("HARMONY_STATUS_SCREENSHOT"))  // docs/status.png is made so
    run_capture("timeout 60 " + base + "--window-size=900,420 --screenshot=" + shot + " " + url + " 2>/dev/null");
  run_capture("rm -rf " + profile);
}
#endif
