// SPDX-License-Identifier: MIT
// harmonyd - the Harmony load balancer as a small daemon: a thin command line
// over harmony.hpp.
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#if defined(_WIN32)
#include <condition_variable>
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#endif

namespace {

const char usage_text[] =
    "usage: harmonyd [options]            run the balancer\n"
    "       harmonyd agent [agent options]  register a backend with a balancer\n"
    "       harmonyd --help | --version\n"
    "\n"
    "Balancer options (durations: 500ms, 30s, 1m, 2h):\n"
    "  --listen HOST:PORT        where clients connect (default 127.0.0.1:3000)\n"
    "  --admin HOST:PORT|none    where backends register (default 127.0.0.1:1666)\n"
    "  --backend HOST:PORT[,weight=N]\n"
    "                            a static backend (repeatable; weight default 500)\n"
    "  --algorithm NAME          leastconn (default) or roundrobin\n"
    "  --persistent              a client address keeps its backend (default)\n"
    "  --no-persistent           every connection is balanced afresh\n"
    "  --concurrency N           -1 unlimited (default), 0 paused, N at most N proxied\n"
    "  --queue-timeout DUR       longest wait in the concurrency queue (default 30s)\n"
    "  --queue-limit N           longest concurrency queue (default 10000)\n"
    "  --requeue N               extra attempts after a backend fails (default 1)\n"
    "  --unavailable TEXT        written to a client nobody can serve (default none;\n"
    "                            \\r \\n \\t \\\\ are escapes)\n"
    "  --host-timeout DUR        a backend silent this long gets no traffic (default 1m)\n"
    "  --connect-timeout DUR     backend connect timeout (default 5s)\n"
    "  --idle-timeout DUR        close proxied connections idle this long (default 10m)\n"
    "  --workers N               event-loop threads (default 1)\n"
    "  --splice                  relay streaming connections inside the kernel (Linux\n"
    "                            splice: less CPU per byte, see README; default off)\n"
    "  --log-level LEVEL         trace, debug, info (default), warn, error, off\n"
    "\n"
    "\n"
    "Agent options (harmonyd agent):\n"
    "  --balancer HOST:PORT      the balancer's admin address (default localhost:1666)\n"
    "  --port N                  the port this backend serves on (required)\n"
    "  --weight N                relative weight (default 500)\n"
    "  --ack DUR                 heartbeat interval, at most half the host timeout (default 20s)\n"
    "  --host H                  address the balancer should connect to (default: as seen)\n"
    "  --log-level LEVEL\n"
    "\n"
#if defined(_WIN32)
    "IPv6 addresses are written [::1]:PORT. Logs go to stderr; Ctrl-C, Ctrl-Break or closing\n"
    "the console stops (an agent deregisters first).\n";
#else
    "IPv6 addresses are written [::1]:PORT. Logs go to stderr; SIGINT or SIGTERM stops\n"
    "(an agent deregisters first).\n";
#endif

std::mutex log_mutex;
harmony::log_level daemon_level = harmony::log_level::info;

void log_to_stderr(harmony::log_level level, std::string_view message) {
  std::time_t t = std::time(nullptr);
  char stamp[32];
  std::tm parts{};
#if defined(_WIN32)
  gmtime_s(&parts, &t);
#else
  gmtime_r(&t, &parts);
#endif
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &parts);
  std::lock_guard<std::mutex> lock(log_mutex);
  std::fprintf(stderr, "%s harmonyd %s: %.*s\n", stamp, harmony::to_string(level), static_cast<int>(message.size()),
               message.data());
  std::fflush(stderr);
}

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "harmonyd: %s\nTry 'harmonyd --help'.\n", message.c_str());
  std::exit(2);
}

struct static_backend {
  std::string address;
  int weight = 500;
};

// Reads "--name value" or "--name=value"; returns false when argv[i] is another flag.
struct arguments {
  arguments(int count, char** values) : argc(count), argv(values) {}
  int argc;
  char** argv;
  int i = 1;
  std::string flag;
  std::string inline_value;
  bool has_inline = false;

  bool next() {
    if (i >= argc) return false;
    std::string a = argv[i++];
    has_inline = false;
    auto eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      flag = a.substr(0, eq);
      inline_value = a.substr(eq + 1);
      has_inline = true;
    } else {
      flag = a;
    }
    return true;
  }
  std::string value() {
    if (has_inline) return inline_value;
    if (i >= argc) usage_error("option " + flag + " needs a value");
    return argv[i++];
  }
};

int parse_int(const std::string& flag, const std::string& text, long low, long high) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < low || v > high)
    usage_error("option " + flag + ": '" + text + "' is not a number from " + std::to_string(low) + " to " +
                std::to_string(high));
  return static_cast<int>(v);
}

harmony::duration parse_dur(const std::string& flag, const std::string& text) {
  harmony::duration d{};
  if (harmony::parse_duration(text, d))
    usage_error("option " + flag + ": '" + text + "' is not a duration (e.g. 500ms, 30s, 1m)");
  return d;
}

static_backend parse_backend(const std::string& text) {
  static_backend b;
  std::string rest = text;
  auto comma = text.find(',');
  b.address = text.substr(0, comma);
  harmony::endpoint ep;
  if (harmony::parse_endpoint(b.address, ep) || ep.port == 0)
    usage_error("--backend: '" + b.address + "' is not HOST:PORT (IPv6 as [::1]:PORT)");
  while (comma != std::string::npos) {
    auto next = text.find(',', comma + 1);
    std::string option = text.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
    if (option.rfind("weight=", 0) == 0) b.weight = parse_int("--backend weight", option.substr(7), 1, 1000000);
    else usage_error("--backend: unknown option '" + option + "' (expected weight=N)");
    comma = next;
  }
  return b;
}

#if defined(_WIN32)
// Windows has no signals to wait for: Ctrl-C, Ctrl-Break, closing the console,
// logoff and shutdown arrive as console control events on a thread of their own.
// The main thread waits for one; for a close, logoff or shutdown the system ends
// the process once the handler returns, so the handler waits until the daemon
// has stopped (Windows grants it about five seconds).
struct console_stop {
  std::mutex mutex;
  std::condition_variable changed;
  DWORD event = 0;
  bool requested = false;
  bool finished = false;
} stop_state;

BOOL WINAPI on_console_event(DWORD event) {
  std::unique_lock<std::mutex> lock(stop_state.mutex);
  if (!stop_state.requested) {
    stop_state.requested = true;
    stop_state.event = event;
  }
  stop_state.changed.notify_all();
  if (event != CTRL_C_EVENT && event != CTRL_BREAK_EVENT)
    stop_state.changed.wait_for(lock, std::chrono::seconds(4), [] { return stop_state.finished; });
  return TRUE;
}

const char* console_event_name(DWORD event) {
  switch (event) {
    case CTRL_C_EVENT: return "Ctrl-C";
    case CTRL_BREAK_EVENT: return "Ctrl-Break";
    case CTRL_CLOSE_EVENT: return "console close";
    case CTRL_LOGOFF_EVENT: return "logoff";
    case CTRL_SHUTDOWN_EVENT: return "shutdown";
    default: return "console event";
  }
}
#else
sigset_t stop_signals;
#endif

// Signals are taken synchronously by the main thread; the loops never see them.
// A balancer holds two descriptors per connection: take all the system allows.
void block_stop_signals() {
#if !defined(_WIN32)
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
#else
  ::SetConsoleCtrlHandler(on_console_event, TRUE);
#endif
}

// The daemon's own messages, filtered like the library's.
void note(harmony::log_level level, const std::string& message) {
  if (level >= daemon_level && daemon_level != harmony::log_level::off) log_to_stderr(level, message);
}

void wait_for_stop_signal() {
#if !defined(_WIN32)
  int received = 0;
  sigwait(&stop_signals, &received);
  note(harmony::log_level::info, std::string("stopping on ") + (received == SIGINT ? "SIGINT" : "SIGTERM"));
#else
  DWORD event = 0;
  {
    std::unique_lock<std::mutex> lock(stop_state.mutex);
    stop_state.changed.wait(lock, [] { return stop_state.requested; });
    event = stop_state.event;
  }
  note(harmony::log_level::info, std::string("stopping on ") + console_event_name(event));
#endif
}

// Lets a console handler that holds the process open (close, logoff) return.
void stopped() {
#if defined(_WIN32)
  {
    std::lock_guard<std::mutex> lock(stop_state.mutex);
    stop_state.finished = true;
  }
  stop_state.changed.notify_all();
#endif
}

// The life of a daemon command: start, serve until SIGINT or SIGTERM (or a
// console event), wind down. Returns the exit code.
template <class Start, class WindDown>
int serve_until_stopped(const char* who, Start start, WindDown wind_down) {
  block_stop_signals();
  if (std::error_code e = start()) {
    std::fprintf(stderr, "%s: cannot start: %s\n", who, e.message().c_str());
    return 1;
  }
  wait_for_stop_signal();
  wind_down();
  stopped();
  return 0;
}

// Lets a shell user write the unavailable text with \r, \n, \t and \\.
std::string unescape(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    char c = text[++i];
    switch (c) {
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case '\\': out += '\\'; break;
      default: out += '\\'; out += c;  // not an escape: kept as written
    }
  }
  return out;
}

void check_address(const std::string& flag, const std::string& text) {
  harmony::endpoint ep;
  if (harmony::parse_endpoint(text, ep)) usage_error("option " + flag + ": '" + text + "' is not HOST:PORT (IPv6 as [::1]:PORT)");
}

int run_balancer(int argc, char** argv) {
  harmony::server_options options;
  options.log = log_to_stderr;
  std::vector<static_backend> backends;
  arguments args{argc, argv};
  while (args.next()) {
    const std::string& f = args.flag;
    if (f == "--help" || f == "-h") {
      std::fputs(usage_text, stdout);
      return 0;
    } else if (f == "--version") {
      std::printf("harmonyd %d.%d.%d\n", HARMONY_VERSION_MAJOR, HARMONY_VERSION_MINOR, HARMONY_VERSION_PATCH);
      return 0;
    } else if (f == "--listen") {
      options.listen = args.value();
      check_address(f, options.listen);
    } else if (f == "--admin") {
      options.admin = args.value();
      if (options.admin == "none") options.admin.clear();  // static backends only
      else check_address(f, options.admin);
    } else if (f == "--backend") {
      backends.push_back(parse_backend(args.value()));
    } else if (f == "--algorithm") {
      std::string v = args.value();
      if (harmony::parse_algorithm(v, options.balance)) usage_error("--algorithm: unknown algorithm '" + v + "' (leastconn, roundrobin)");
    } else if (f == "--persistent") {
      options.persistent = true;
    } else if (f == "--no-persistent") {
      options.persistent = false;
    } else if (f == "--splice") {
      options.splice = true;
    } else if (f == "--concurrency") {
      options.concurrency = parse_int(f, args.value(), -1, 1000000000);
    } else if (f == "--queue-timeout") {
      options.queue_timeout = parse_dur(f, args.value());
    } else if (f == "--queue-limit") {
      options.queue_limit = static_cast<std::size_t>(parse_int(f, args.value(), 0, 100000000));
    } else if (f == "--requeue") {
      options.requeue = parse_int(f, args.value(), 0, 1000);
    } else if (f == "--unavailable") {
      options.unavailable = unescape(args.value());
    } else if (f == "--host-timeout") {
      options.host_timeout = parse_dur(f, args.value());
    } else if (f == "--connect-timeout") {
      options.connect_timeout = parse_dur(f, args.value());
    } else if (f == "--idle-timeout") {
      options.idle_timeout = parse_dur(f, args.value());
    } else if (f == "--workers") {
      options.workers = parse_int(f, args.value(), 1, 256);
    } else if (f == "--log-level") {
      std::string v = args.value();
      if (harmony::parse_log_level(v, options.level)) usage_error("--log-level: unknown level '" + v + "'");
    } else {
      usage_error("unknown option '" + f + "'");
    }
  }

  daemon_level = options.level;
  harmony::server balancer(options);
  for (const auto& b : backends) {
    std::string id;
    if (auto e = balancer.add_backend(b.address, b.weight, &id)) {
      std::fprintf(stderr, "harmonyd: backend %s: %s\n", b.address.c_str(), e.message().c_str());
      return 2;
    }
    note(harmony::log_level::info, "backend " + b.address + " weight " + std::to_string(b.weight) + " id " + id);
  }

  return serve_until_stopped("harmonyd", [&] { return balancer.start(); }, [&] { balancer.stop(); });
}

int run_agent(int argc, char** argv) {
  harmony::client_options options;
  options.log = log_to_stderr;
  bool have_port = false;
  arguments args{argc, argv};
  args.i = 2;
  while (args.next()) {
    const std::string& f = args.flag;
    if (f == "--help" || f == "-h") {
      std::fputs(usage_text, stdout);
      return 0;
    } else if (f == "--balancer") {
      options.balancer = args.value();
      check_address(f, options.balancer);
    } else if (f == "--port") {
      options.port = static_cast<std::uint16_t>(parse_int(f, args.value(), 1, 65535));
      have_port = true;
    } else if (f == "--weight") {
      options.weight = parse_int(f, args.value(), 1, 1048576);
    } else if (f == "--ack") {
      options.ack = parse_dur(f, args.value());
      if (options.ack.count() <= 0) usage_error("--ack must be positive");
    } else if (f == "--host") {
      options.host = args.value();
      if (options.host.empty() || options.host.find_first_of(" \t") != std::string::npos)
        usage_error("--host: '" + options.host + "' is not a host name or address");
    } else if (f == "--log-level") {
      std::string v = args.value();
      if (harmony::parse_log_level(v, options.level)) usage_error("--log-level: unknown level '" + v + "'");
    } else {
      usage_error("unknown agent option '" + f + "'");
    }
  }
  if (!have_port) usage_error("agent: --port N is required (the port this backend serves on)");
  daemon_level = options.level;
  harmony::client agent(options);
  return serve_until_stopped("harmonyd agent", [&] { return agent.start(); }, [&] { agent.close(); });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "agent") return run_agent(argc, argv);
  return run_balancer(argc, argv);
}
