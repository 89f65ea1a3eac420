namespace harmony {
namespace detail {

// >>stats-render  sans-IO stats: HTTP request lines, Prometheus text, JSON, the status page
// What the stats port shows, taken at one moment.
struct stats_snapshot {
  server_stats totals;
  std::vector<backend_info> backends;
  std::int64_t uptime_ms = 0;
  long open_descriptors = -1;  // -1 where the platform cannot count them
  std::string algorithm;
  std::string version;
};

// The start of an HTTP/1.x request: its method and path, once the header is in.
struct http_request {
  enum class status { incomplete, done, bad };
  status result = status::incomplete;
  std::string method;
  std::string path;  // without the query string
};
inline constexpr std::size_t http_max_header = 8192;

inline http_request parse_http_request(std::string_view bytes) {
  http_request r;
  std::size_t end = bytes.find("\r\n\r\n");
  if (end == std::string_view::npos) end = bytes.find("\n\n");
  if (end == std::string_view::npos) {
    if (bytes.size() > http_max_header) r.result = http_request::status::bad;
    return r;
  }
  if (end > http_max_header) {
    r.result = http_request::status::bad;
    return r;
  }
  std::string_view line = bytes.substr(0, bytes.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::size_t a = line.find(' ');
  std::size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  r.result = http_request::status::bad;
  if (b == std::string_view::npos || line.substr(b + 1, 7) != "HTTP/1.") return r;
  std::string_view target = line.substr(a + 1, b - a - 1);
  if (target.empty() || target[0] != '/') return r;
  r.method = std::string(line.substr(0, a));
  r.path = std::string(target.substr(0, target.find('?')));
  r.result = http_request::status::done;
  return r;
}

inline std::string http_response(int status, std::string_view type, std::string_view body, bool head = false) {
  const char* reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed" : "Bad Request";
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + std::string(type) +
                    "\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
  if (!head) out.append(body.data(), body.size());
  return out;
}

// A label value in the Prometheus text format: backslash, quote and newline escaped.
inline std::string prometheus_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

// The Prometheus text exposition format (version 0.0.4): a HELP and a TYPE line
// before each family's samples.
inline std::string render_prometheus(const stats_snapshot& s) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto sample = [&](const char* name, const std::string& labels, double value) {
    char number[64];
    std::snprintf(number, sizeof number, "%.17g", value);
    out += name;
    if (!labels.empty()) out += "{" + labels + "}";
    out += " ";
    out += number;
    out += "\n";
  };
  auto scalar = [&](const char* name, const char* type, const char* help, double value) {
    family(name, type, help);
    sample(name, "", value);
  };
  scalar("harmony_connections_accepted_total", "counter", "Client connections accepted.", double(s.totals.accepted));
  scalar("harmony_connections_active", "gauge", "Client connections open now.", double(s.totals.active));
  scalar("harmony_connections_queued", "gauge", "Client connections waiting in the wait queue: one queue for all backends, for a "
         "concurrency slot or for room on any backend at its maxconn.",
         double(s.totals.queued));
  scalar("harmony_connections_unavailable_total", "counter",
         "Client connections nobody could serve (no backend, attempts exhausted, queue full or timed out).",
         double(s.totals.unavailable));
  scalar("harmony_backend_connect_failures_total", "counter", "Failed backend connection attempts, all backends.",
         double(s.totals.connect_failures));
  scalar("harmony_connections_refused_total", "counter",
         "Client connections closed at once: their address had max-conns-per-client open.", double(s.totals.refused));
  scalar("harmony_bad_proxy_headers_total", "counter",
         "Client connections reset for lack of a valid PROXY header (accept-proxy).", double(s.totals.bad_proxy_headers));
  scalar("harmony_bytes_in_total", "counter", "Bytes relayed from clients to backends.", double(s.totals.bytes_in));
  scalar("harmony_bytes_out_total", "counter", "Bytes relayed from backends to clients.", double(s.totals.bytes_out));
  scalar("harmony_bytes_spliced_total", "counter", "Of the bytes relayed, those moved inside the kernel (splice).",
         double(s.totals.bytes_spliced));
  scalar("harmony_backends", "gauge", "Backends known (registered, static or from DNS).", double(s.backends.size()));
  scalar("harmony_uptime_seconds", "gauge", "Seconds since the balancer started.", double(s.uptime_ms) / 1000.0);
  if (s.open_descriptors >= 0)
    scalar("process_open_fds", "gauge", "Open file descriptors of the process.", double(s.open_descriptors));
  auto labels = [](const backend_info& b) {
    return "backend=\"" + prometheus_label(b.id) + "\",address=\"" + prometheus_label(b.address.to_string()) + "\"";
  };
  struct per_backend {
    const char* name;
    const char* type;
    const char* help;
    double (*value)(const backend_info&);
  };
  static const per_backend rows[] = {
      {"harmony_backend_up", "gauge", "1 when the backend would receive a new connection now.",
       [](const backend_info& b) { return b.eligible ? 1.0 : 0.0; }},
      {"harmony_backend_weight", "gauge", "The backend's weight.", [](const backend_info& b) { return double(b.weight); }},
      {"harmony_backend_maxconn", "gauge", "The backend's connection limit (0: none).",
       [](const backend_info& b) { return double(b.maxconn); }},
      {"harmony_backend_active_connections", "gauge", "Connections to the backend open now.",
       [](const backend_info& b) { return double(b.active); }},
      {"harmony_backend_connections_total", "counter", "Connections sent to the backend.",
       [](const backend_info& b) { return double(b.total); }},
      {"harmony_backend_failures_total", "counter", "Failed connection attempts to the backend.",
       [](const backend_info& b) { return double(b.failures); }},
      {"harmony_backend_bytes_in_total", "counter",
       "Bytes relayed from clients to the backend, counted as each connection ends.",
       [](const backend_info& b) { return double(b.bytes_in); }},
      {"harmony_backend_bytes_out_total", "counter",
       "Bytes relayed from the backend to clients, counted as each connection ends.",
       [](const backend_info& b) { return double(b.bytes_out); }},
  };
  for (const per_backend& row : rows) {
    family(row.name, row.type, row.help);
    for (const backend_info& b : s.backends) sample(row.name, labels(b), row.value(b));
  }
  family("harmony_backend_info", "gauge", "Always 1: the backend's state, role and source as labels.");
  for (const backend_info& b : s.backends)
    sample("harmony_backend_info",
           labels(b) + ",state=\"" + prometheus_label(b.state) + "\",backup=\"" + (b.backup ? "yes" : "no") +
               "\",source=\"" + prometheus_label(b.source) + "\",proxy=\"" + to_string(b.proxy) + "\"",
           1.0);
  return out;
}

inline std::string json_string(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", u);
      out += esc;
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

inline std::string render_json(const stats_snapshot& s) {
  const server_stats& t = s.totals;
  std::string out = "{\"version\":" + json_string(s.version) + ",\"algorithm\":" + json_string(s.algorithm) +
                    ",\"uptime_seconds\":" + std::to_string(s.uptime_ms / 1000) +
                    ",\"open_descriptors\":" + std::to_string(s.open_descriptors) +
                    ",\"accepted\":" + std::to_string(t.accepted) + ",\"active\":" + std::to_string(t.active) +
                    ",\"queued\":" + std::to_string(t.queued) + ",\"unavailable\":" + std::to_string(t.unavailable) +
                    ",\"connect_failures\":" + std::to_string(t.connect_failures) +
                    ",\"bytes_in\":" + std::to_string(t.bytes_in) + ",\"bytes_out\":" + std::to_string(t.bytes_out) +
                    ",\"refused\":" + std::to_string(t.refused) +
                    ",\"bad_proxy_headers\":" + std::to_string(t.bad_proxy_headers) + ",\"backends\":[";
  for (std::size_t i = 0; i < s.backends.size(); ++i) {
    const backend_info& b = s.backends[i];
    if (i) out += ",";
    out += "{\"id\":" + json_string(b.id) + ",\"address\":" + json_string(b.address.to_string()) +
           ",\"state\":" + json_string(b.state) + ",\"weight\":" + std::to_string(b.weight) +
           ",\"maxconn\":" + std::to_string(b.maxconn) + ",\"backup\":" + (b.backup ? "true" : "false") +
           ",\"active\":" + std::to_string(b.active) + ",\"total\":" + std::to_string(b.total) +
           ",\"failures\":" + std::to_string(b.failures) + ",\"bytes_in\":" + std::to_string(b.bytes_in) +
           ",\"bytes_out\":" + std::to_string(b.bytes_out) + ",\"proxy\":" + json_string(to_string(b.proxy)) +
           ",\"source\":" + json_string(b.source) + "}";
  }
  return out + "]}";
}

inline std::string html_text(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out.push_back(c);
  }
  return out;
}

// The status page: self-contained (no external asset), rendered with the data
// of the moment, then refreshed in place from /status.json every second.
inline std::string render_status_page(const stats_snapshot& s) {
  std::string rows;
  for (const backend_info& b : s.backends)
    rows += "<tr><td>" + html_text(b.id.substr(0, 8)) + "</td><td>" + html_text(b.address.to_string()) +
            "</td><td class=\"s-" + html_text(b.state) + "\">" + html_text(b.state) + "</td><td>" +
            std::to_string(b.weight) + "</td><td>" + std::to_string(b.active) + "</td><td>" +
            std::to_string(b.total) + "</td><td>" + std::to_string(b.failures) + "</td><td>" +
            std::to_string(b.bytes_in) + "</td><td>" + std::to_string(b.bytes_out) + "</td></tr>";
  std::string page = R"(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Harmony</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}.sub{color:#667;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border:1px solid #dde;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde;border-radius:8px;min-width:640px}
th,td{padding:6px 12px;text-align:right;border-bottom:1px solid #eef}th{background:#eef1f6}
td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
.s-up{color:#0a7d32;font-weight:600}.s-down,.s-expired,.s-offline{color:#b3261e;font-weight:600}
.s-draining,.s-full,.s-no-port{color:#9a6700;font-weight:600}
</style></head><body>
<h1>Harmony</h1><div class="sub"><span id="algorithm">@ALGORITHM@</span> &middot; version @VERSION@ &middot;
up <span id="uptime">@UPTIME@</span> s &middot; updated <span id="updated">at load</span></div>
<div class="cards">
<div class="card">active<b id="active">@ACTIVE@</b></div>
<div class="card">accepted<b id="accepted">@ACCEPTED@</b></div>
<div class="card">queued<b id="queued">@QUEUED@</b></div>
<div class="card">unavailable<b id="unavailable">@UNAVAILABLE@</b></div>
<div class="card">backends<b id="count">@COUNT@</b></div>
</div>
<table><thead><tr><th>id</th><th>address</th><th>state</th><th>weight</th><th>active</th><th>total</th><th>failures</th><th>bytes in</th><th>bytes out</th></tr></thead>
<tbody id="backends">@ROWS@</tbody></table>
<script>
function esc(t){return String(t).replace(/[&<>"]/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
function refresh(){
  fetch('status.json',{cache:'no-store'}).then(function(r){return r.json();}).then(function(s){
    ['active','accepted','queued','unavailable'].forEach(function(k){document.getElementById(k).textContent=s[k];});
    document.getElementById('uptime').textContent=s.uptime_seconds;
    document.getElementById('count').textContent=s.backends.length;
    document.getElementById('backends').innerHTML=s.backends.map(function(b){
      return '<tr><td>'+esc(b.id.slice(0,8))+'</td><td>'+esc(b.address)+'</td><td class="s-'+esc(b.state)+'">'+esc(b.state)+
        '</td><td>'+b.weight+'</td><td>'+b.active+'</td><td>'+b.total+'</td><td>'+b.failures+'</td><td>'+b.bytes_in+'</td><td>'+b.bytes_out+'</td></tr>';}).join('');
    document.getElementById('updated').textContent=new Date().toLocaleTimeString();
  }).catch(function(){document.getElementById('updated').textContent='unreachable';});
}
refresh();setInterval(refresh,1000);
</script></body></html>
)";
  auto put = [&](std::string_view key, const std::string& value) {
    std::size_t at = page.find(key);
    if (at != std::string::npos) page.replace(at, key.size(), value);
  };
  put("@ALGORITHM@", html_text(s.algorithm));
  put("@VERSION@", html_text(s.version));
  put("@UPTIME@", std::to_string(s.uptime_ms / 1000));
  put("@ACTIVE@", std::to_string(s.totals.active));
  put("@ACCEPTED@", std::to_string(s.totals.accepted));
  put("@QUEUED@", std::to_string(s.totals.queued));
  put("@UNAVAILABLE@", std::to_string(s.totals.unavailable));
  put("@COUNT@", std::to_string(s.backends.size()));
  put("@ROWS@", rows);
  return page;
}

// The answer to one request: / the page, /metrics, /status.json; GET and HEAD only.
inline std::string stats_answer(const http_request& r, const stats_snapshot& s) {
  if (r.result != http_request::status::done) return http_response(400, "text/plain", "bad request\n");
  bool head = r.method == "HEAD";
  if (r.method != "GET" && !head) return http_response(405, "text/plain", "GET or HEAD\n");
  if (r.path == "/metrics") return http_response(200, "text/plain; version=0.0.4; charset=utf-8", render_prometheus(s), head);
  if (r.path == "/status.json") return http_response(200, "application/json", render_json(s), head);
  if (r.path == "/" || r.path == "/index.html")
    return http_response(200, "text/html; charset=utf-8", render_status_page(s), head);
  return http_response(404, "text/plain", "not found: /, /metrics, /status.json\n", head);
}

}  // namespace detail
}  // namespace harmony
