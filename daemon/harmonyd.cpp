// SPDX-License-Identifier: MIT
// harmonyd - the Harmony load balancer as a small daemon: a thin command line
// over harmony.hpp.
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(_WIN32)
#include <condition_variable>
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace {

// The lines of --help around the flag tables.
const char usage_head[] =
    "usage: harmonyd [--config FILE] [options]              run the balancer\n"
    "       harmonyd agent [--config FILE] [agent options]  register a backend with a balancer\n"
    "       harmonyd [agent] --check [--config FILE] [...]  check the configuration, start nothing\n"
    "       harmonyd ctl [ctl options] COMMAND...  one admin command (list, stats, drain ID, ...)\n"
    "       harmonyd --help | --version\n"
    "\n"
    "Configuration (both commands):\n"
    "  --config FILE             read FILE first: one directive a line, a flag's name\n"
    "                            without the dashes and its value (listen 127.0.0.1:3000);\n"
    "                            # starts a comment; the command line overrides the file\n"
    "                            and adds to its repeatable flags\n"
    "  --check                   check the file and the flags, start nothing: exit 0, or\n"
    "                            2 with FILE:LINE: message for each problem\n"
    "\n"
    "Balancer options (durations need a unit: 500ms, 30s, 1m, 2h):\n";
const char usage_agent[] =
    "\n"
    "Agent options (harmonyd agent):\n";
const char usage_ctl[] =
    "\n"
    "Ctl options (harmonyd ctl; exit 0 on an ok reply, 1 on an err reply, 3 when the\n"
    "balancer cannot be reached):\n";
#if defined(_WIN32)
const char usage_tail[] =
    "\n"
    "IPv6 addresses are written [::1]:PORT. Logs go to stderr; Ctrl-C, Ctrl-Break or closing\n"
    "the console stops: the balancer drains (see --drain-timeout), an agent deregisters\n"
    "first; a second Ctrl-C stops at once.\n";
#else
const char usage_tail[] =
    "\n"
    "IPv6 addresses are written [::1]:PORT. Logs go to stderr; SIGINT or SIGTERM stops: the\n"
    "balancer drains (see --drain-timeout), an agent deregisters first; a second SIGINT or\n"
    "SIGTERM stops at once. SIGHUP reloads the balancer's --config file (backends, log\n"
    "level; see harmonyd(8)).\n";
#endif

std::mutex log_mutex;
// The daemon's level, which SIGHUP may change while the loops log (see log_filtered).
std::atomic<harmony::log_level> daemon_level{harmony::log_level::info};

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

// --access-log: one line per client connection as it ends (README, Access log),
// written by the loop threads; reopened on SIGUSR1 so that log rotation can move the
// file away and have a new one begun.
class access_log_file {
 public:
  // Opens `path` for appending ("-": stderr); what is wrong, empty when it is open.
  std::string open(const std::string& path) {
    std::lock_guard<std::mutex> lock(mutex_);
    return open_locked(path);
  }
  std::string reopen() {
    std::lock_guard<std::mutex> lock(mutex_);
    return path_.empty() || path_ == "-" ? std::string() : open_locked(path_);
  }
  const std::string& path() const { return path_; }
  void write(const harmony::access_entry& e) {
    std::string line = harmony::format_access_entry(e, harmony::detail::unix_ms()) + "\n";
    std::lock_guard<std::mutex> lock(mutex_);
    std::FILE* out = path_ == "-" ? stderr : file_;
    if (!out) return;
    std::fwrite(line.data(), 1, line.size(), out);
    std::fflush(out);  // whole lines, at once: readers and rotation see no half line
  }

 private:
  // On failure the file in use, if any, stays in use.
  std::string open_locked(const std::string& path) {
    std::FILE* f = nullptr;
    if (path != "-" && !(f = std::fopen(path.c_str(), "a"))) return path + ": " + std::strerror(errno);
    if (file_) std::fclose(file_);
    file_ = f;
    path_ = path;
    return {};
  }
  std::mutex mutex_;
  std::string path_;
  std::FILE* file_ = nullptr;
};
access_log_file access_log;

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "harmonyd: %s\nTry 'harmonyd --help'.\n", message.c_str());
  std::exit(2);
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
  int requests = 0;       // stop events so far: the second one stops at once
  bool wound_down = false;  // the first one's wind-down is over
  bool finished = false;
} stop_state;

BOOL WINAPI on_console_event(DWORD event) {
  std::unique_lock<std::mutex> lock(stop_state.mutex);
  if (stop_state.requests == 0) stop_state.event = event;
  // Windows ends the process about five seconds after a close, logoff or shutdown
  // event: that one stops at once (no drain), so the state file is still written.
  stop_state.requests += event == CTRL_C_EVENT || event == CTRL_BREAK_EVENT ? 1 : 2;
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
pthread_t main_thread;
std::atomic<bool> wound_down{false};
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
  sigaddset(&stop_signals, SIGHUP);   // a reload, never a stop
  sigaddset(&stop_signals, SIGUSR1);  // reopens the access log
  sigaddset(&stop_signals, SIGUSR2);  // an upgrade: a stop only once a successor serves
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  main_thread = pthread_self();
  std::signal(SIGPIPE, SIG_IGN);
#else
  ::SetConsoleCtrlHandler(on_console_event, TRUE);
#endif
}

// The library's lines and the daemon's own, filtered by the daemon's level (which a
// reload changes, as it does the library's).
void log_filtered(harmony::log_level level, std::string_view message) {
  if (harmony::log_enabled(daemon_level, level)) log_to_stderr(level, message);
}

void note(harmony::log_level level, const std::string& message) { log_filtered(level, message); }

#if !defined(_WIN32)
// SIGUSR1: the access log begins again at its path (Windows has no SIGUSR1: a
// rotation there needs a restart).
void reopen_access_log() {
  if (access_log.path().empty()) return;
  std::string problem = access_log.reopen();
  if (problem.empty()) note(harmony::log_level::info, "SIGUSR1: access log reopened");
  else note(harmony::log_level::error, "SIGUSR1: cannot reopen the access log: " + problem);
}
#endif

// Returns when a stop is asked for; calls reload() for each SIGHUP before that, and
// upgrade() for each SIGUSR2: true (returned here too) when a successor serves.
template <class Reload, class Upgrade>
bool wait_for_stop_signal(Reload reload, Upgrade upgrade) {
#if !defined(_WIN32)
  for (;;) {
    int received = 0;
    sigwait(&stop_signals, &received);
    if (received == SIGUSR1) {
      reopen_access_log();
      continue;
    }
    if (received == SIGHUP) {
      reload();
      continue;
    }
    if (received == SIGUSR2) {
      if (upgrade()) return true;
      continue;
    }
    note(harmony::log_level::info, std::string("stopping on ") + (received == SIGINT ? "SIGINT" : "SIGTERM"));
    return false;
  }
#else
  // Windows has no SIGHUP and no SIGUSR2: a changed file or binary needs a restart there.
  (void)reload;
  (void)upgrade;
  DWORD event = 0;
  {
    std::unique_lock<std::mutex> lock(stop_state.mutex);
    stop_state.changed.wait(lock, [] { return stop_state.requests > 0; });
    event = stop_state.event;
  }
  note(harmony::log_level::info, std::string("stopping on ") + console_event_name(event));
  return false;
#endif
}

// After the first stop signal: waits until the wind-down is over (true) or a second
// stop signal comes (false).
bool wait_for_wind_down_or_second_signal() {
#if !defined(_WIN32)
  for (;;) {
    int received = 0;
    sigwait(&stop_signals, &received);
    if (wound_down.load()) return true;  // the wind-down's own wake-up (or a signal as it ended)
    if (received == SIGHUP || received == SIGUSR2) continue;  // no reload or upgrade while it drains, and no stop
    if (received == SIGUSR1) {
      reopen_access_log();
      continue;
    }
    note(harmony::log_level::info,
         std::string("stopping at once on a second ") + (received == SIGINT ? "SIGINT" : "SIGTERM"));
    return false;
  }
#else
  std::unique_lock<std::mutex> lock(stop_state.mutex);
  stop_state.changed.wait(lock, [] { return stop_state.wound_down || stop_state.requests > 1; });
  if (stop_state.wound_down) return true;
  lock.unlock();
  note(harmony::log_level::info, "stopping at once (a second stop event, or the console closing)");
  return false;
#endif
}

// Wakes wait_for_wind_down_or_second_signal: the wind-down is over.
void wind_down_over() {
#if !defined(_WIN32)
  wound_down.store(true);
  pthread_kill(main_thread, SIGTERM);  // blocked everywhere: sigwait takes it
#else
  std::lock_guard<std::mutex> lock(stop_state.mutex);
  stop_state.wound_down = true;
  stop_state.changed.notify_all();
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
// console event) or until a successor serves after SIGUSR2, wind down (the balancer
// drains; wind_down(true) after an upgrade) on a thread of its own while a second
// signal may cut it short; each SIGHUP before the stop calls reload(), each SIGUSR2
// upgrade(). Returns the exit code. A start-up failure exits 2, like a bad flag,
// naming the flag it belongs to when `start` says (an address that cannot be bound).
template <class Start, class WindDown, class CutShort, class Reload, class Upgrade, class Blame>
int serve_until_stopped(const char* who, Start start, WindDown wind_down, CutShort cut_short, Reload reload,
                        Upgrade upgrade, Blame blame) {
  block_stop_signals();
  harmony::option_problem problem;
  if (std::error_code e = start(&problem)) {
    if (problem.option)
      std::fprintf(stderr, "%s: cannot start: %s: %s\n", who, blame(problem.option).c_str(), problem.reason.c_str());
    else
      std::fprintf(stderr, "%s: cannot start: %s\n", who, e.message().c_str());
    return 2;
  }
  bool upgraded = wait_for_stop_signal(reload, upgrade);
  std::thread winding([&] {
    wind_down(upgraded);
    wind_down_over();
  });
  if (!wait_for_wind_down_or_second_signal()) cut_short();
  winding.join();
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

// ---- The flags: one table per command drives parsing and --help.

struct static_backend {
  std::string address;
  harmony::backend_options options;
  bool resolve = false;  // ,resolve: every address of the name, followed (server::add_backend_name)
  std::string origin;    // "FILE:LINE: backend" for a line of --config; empty for the command line
  int line = 0;          // that line's number
};

// What the balancer's flags set: the library's options and the static backends.
struct balancer_settings {
  harmony::server_options options;
  std::vector<static_backend> backends;
  std::string access_log;  // --access-log PATH, or "-"
};

// The whole file, or false with the system's reason.
bool read_whole_file(const std::string& path, std::string& text, std::string& problem) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    problem = std::strerror(errno);
    return false;
  }
  char block[4096];
  std::size_t k;
  while ((k = std::fread(block, 1, sizeof block, f)) > 0) text.append(block, k);
  int error = errno;
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) problem = std::strerror(error);
  return !failed;
}

// The shared secret of --secret-file: the file's content without its trailing newline.
// Returns what is wrong, empty when `out` holds the secret. A file other users may read
// is taken with a warning (the secret is only as private as the file).
std::string read_secret_file(const std::string& path, std::string& out) {
  // stdio, not <fstream>: iostreams would double the daemon's code and its idle RSS.
  std::string text, problem;
  if (!read_whole_file(path, text, problem)) return "cannot read '" + path + "': " + problem;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return "'" + path + "' is empty: it should hold the shared secret";
#if !defined(_WIN32)
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRGRP | S_IROTH)) != 0)
    std::fprintf(stderr, "harmonyd: warning: --secret-file '%s' is readable by other users (chmod 600 it)\n",
                 path.c_str());
#endif
  out = std::move(text);
  return {};
}

template <class Settings, auto field>
std::string set_secret_file(Settings& s, const std::string& path) {
  return read_secret_file(path, s.options.*field);
}

// What the agent's flags set.
struct agent_settings {
  harmony::client_options options;
  bool have_port = false;  // --port is required: the library's default (80) is rarely right
  bool have_balancer = false;  // the first --balancer replaces the default, later ones add
};

// One flag. A row knows how to apply a value and what --help says; the default it
// shows comes from default-constructed settings, that is from the library's own
// defaults. `name` is the long flag without dashes, which is also the directive a
// configuration file would use.
template <class Settings>
struct flag {
  const char* name;
  const char* value;   // placeholder in --help; nullptr for a switch, which takes none
  const char* help;    // '\n' continues it on another line
  const char* option;  // the library option it sets, as check() names it; nullptr if none
  // Applies the value text (empty for a switch); returns what is wrong, empty when it applied.
  std::string (*apply)(Settings& settings, const std::string& value);
  // The default --help shows, given default settings: empty shows none; for a switch,
  // non-empty means the switch is the default.
  std::string (*shown)(const Settings& defaults);
};

std::string quoted(const std::string& text) { return "'" + text + "'"; }

// The type of the option `field` points to.
template <auto field>
struct field_of;
template <class Options, class T, T Options::*field>
struct field_of<field> {
  using type = T;
};

template <class Settings, auto field>
std::string set_text(Settings& s, const std::string& value) {
  s.options.*field = value;
  return {};
}

template <class Settings, auto field>
std::string show_text(const Settings& d) {
  return d.options.*field;
}

// Reads any number the option's type holds; its range is the library's to check. A
// number beyond the type is refused with the library's reason, found by asking check()
// about the type's extremes.
template <class Settings, auto field>
std::string set_integer(Settings& s, const std::string& text) {
  using T = typename field_of<field>::type;
  long long number = 0;
  if (harmony::parse_integer(text, std::numeric_limits<long long>::min(), std::numeric_limits<long long>::max(), number))
    return quoted(text) + " is not a number";
  bool fits = false;
  if constexpr (std::is_signed<T>::value)
    fits = number >= static_cast<long long>(std::numeric_limits<T>::min()) &&
           number <= static_cast<long long>(std::numeric_limits<T>::max());
  else
    fits = number >= 0 &&
           static_cast<unsigned long long>(number) <= static_cast<unsigned long long>(std::numeric_limits<T>::max());
  if (fits) {
    s.options.*field = static_cast<T>(number);
    return {};
  }
  for (T extreme : {std::numeric_limits<T>::max(), std::numeric_limits<T>::min()}) {
    Settings probe;
    probe.options.*field = extreme;
    harmony::option_problem problem;
    if (harmony::check(probe.options, &problem)) return problem.reason;
  }
  return quoted(text) + " is out of range";
}

template <class Settings, auto field>
std::string show_number(const Settings& d) {
  return std::to_string(d.options.*field);
}

// A duration needs its unit: a bare number (but 0) is refused, not read as milliseconds.
template <class Settings, auto field>
std::string set_duration(Settings& s, const std::string& text) {
  if (!harmony::parse_duration_with_unit(text, s.options.*field)) return {};
  harmony::duration ms{};
  if (!harmony::parse_duration(text, ms))
    return quoted(text) + " has no unit: write " + text + "s, " + text + "ms, " + text + "m or " + text + "h";
  return quoted(text) + " is not a duration (e.g. 500ms, 30s, 1m)";
}

template <class Settings, auto field>
std::string show_duration(const Settings& d) {
  return harmony::format_duration(d.options.*field);
}

template <class Settings, auto field, bool on>
std::string set_switch(Settings& s, const std::string&) {
  s.options.*field = on;
  return {};
}

template <class Settings, auto field, bool on>
std::string show_switch(const Settings& d) {
  return d.options.*field == on ? "yes" : "";
}

template <class Settings>
std::string set_log_level(Settings& s, const std::string& text) {
  if (harmony::parse_log_level(text, s.options.level)) return "unknown level " + quoted(text);
  return {};
}

template <class Settings>
std::string show_log_level(const Settings& d) {
  return harmony::to_string(d.options.level);
}

template <class Settings>
constexpr flag<Settings> log_level_flag{"log-level", "LEVEL", "trace, debug, info, warn, error, off", nullptr,
                                        set_log_level<Settings>, show_log_level<Settings>};

// HOST:PORT[,weight=N][,maxconn=N][,backup][,proxy=v1|v2][,resolve]
std::string add_backend_flag(balancer_settings& s, const std::string& text) {
  static_backend b;
  auto comma = text.find(',');
  b.address = text.substr(0, comma);  // checked by server::add_backend
  while (comma != std::string::npos) {
    auto next = text.find(',', comma + 1);
    std::string option = text.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
    if (option.rfind("weight=", 0) == 0) {
      if (harmony::parse_weight(option.substr(7), b.options.weight))
        return "weight " + quoted(option.substr(7)) + " is not a number from " + std::to_string(harmony::min_weight) +
               " to " + std::to_string(harmony::max_weight);
    } else if (option.rfind("maxconn=", 0) == 0) {
      long long n = 0;
      if (harmony::parse_integer(option.substr(8), 0, harmony::max_maxconn, n))
        return "maxconn " + quoted(option.substr(8)) + " is not a number from 0 (no limit) to " +
               std::to_string(harmony::max_maxconn);
      b.options.maxconn = static_cast<int>(n);
    } else if (option == "backup") {
      b.options.backup = true;
    } else if (option.rfind("proxy=", 0) == 0) {
      if (harmony::parse_proxy_protocol(option.substr(6), b.options.proxy))
        return "proxy " + quoted(option.substr(6)) + " is not none, v1 or v2";
    } else if (option == "resolve") {
      b.resolve = true;
    } else {
      return "unknown option " + quoted(option) + " (expected weight=N, maxconn=N, backup, proxy=v1|v2 or resolve)";
    }
    comma = next;
  }
  s.backends.push_back(b);
  return {};
}

using server_options = harmony::server_options;
using client_options = harmony::client_options;
using B = balancer_settings;
using A = agent_settings;

const std::vector<flag<B>> balancer_flags = {
    {"listen", "HOST:PORT", "where clients connect", "listen", set_text<B, &server_options::listen>,
     show_text<B, &server_options::listen>},
    {"admin", "HOST:PORT|none", "where backends register, or none", "admin",
     [](B& s, const std::string& v) {
       s.options.admin = v == "none" ? std::string() : v;
       return std::string();
     },
     [](const B& d) { return d.options.admin.empty() ? std::string("none") : d.options.admin; }},
    {"stats", "[HOST:]PORT", "HTTP stats: /metrics (Prometheus), /status.json and\na status page at /; HOST is 127.0.0.1 when left out",
     "stats",
     [](B& s, const std::string& v) {
       long long port = 0;
       bool bare = !harmony::parse_integer(v, 0, 65535, port);
       s.options.stats = bare ? "127.0.0.1:" + v : v;
       return std::string();
     },
     [](const B&) { return std::string("off"); }},
    {"backend", "HOST:PORT[,weight=N][,maxconn=N][,backup][,proxy=v1|v2][,resolve]",
     "a static backend, repeatable; maxconn: at most N open connections\n"
     "(0: no limit); backup: used only while no other backend can serve;\n"
     "proxy: a PROXY protocol header of that version ahead of each client's\n"
     "bytes (the client's address);\n"
     "resolve: every address of the name HOST, followed (see --resolve-interval);\n"
     "_SERVICE._tcp.NAME,resolve (no port): its SRV records give ports,\n"
     "weights and priorities (the lowest primary, the others backups)",
     nullptr, add_backend_flag,
     [](const B&) {
       harmony::backend_options d;
       return "weight " + std::to_string(d.weight) + ", maxconn " + std::to_string(d.maxconn);
     }},
    {"algorithm", "NAME", "leastconn, roundrobin, random (power of two choices)\nor hash (consistent, on the client address)",
     "balance",
     [](B& s, const std::string& v) {
       if (harmony::parse_algorithm(v, s.options.balance))
         return "unknown algorithm " + quoted(v) + " (leastconn, roundrobin, random, hash)";
       return std::string();
     },
     [](const B& d) { return std::string(harmony::to_string(d.options.balance)); }},
    {"persistent", nullptr, "a client address keeps its backend", "persistent",
     set_switch<B, &server_options::persistent, true>, show_switch<B, &server_options::persistent, true>},
    {"no-persistent", nullptr, "every connection is balanced afresh", "persistent",
     set_switch<B, &server_options::persistent, false>, show_switch<B, &server_options::persistent, false>},
    {"concurrency", "N", "-1 unlimited, 0 paused, N at most N proxied", "concurrency",
     set_integer<B, &server_options::concurrency>, show_number<B, &server_options::concurrency>},
    {"queue-timeout", "DUR", "longest wait in the concurrency queue (0s: no wait)", "queue_timeout",
     set_duration<B, &server_options::queue_timeout>, show_duration<B, &server_options::queue_timeout>},
    {"queue-limit", "N", "longest concurrency queue", "queue_limit", set_integer<B, &server_options::queue_limit>,
     show_number<B, &server_options::queue_limit>},
    {"requeue", "N", "extra attempts after a backend fails", "requeue", set_integer<B, &server_options::requeue>,
     show_number<B, &server_options::requeue>},
    {"unavailable", "TEXT", "written to a client nobody can serve\n(\\r \\n \\t \\\\ are escapes)", "unavailable",
     [](B& s, const std::string& v) {
       s.options.unavailable = unescape(v);
       return std::string();
     },
     [](const B& d) { return d.options.unavailable.empty() ? std::string("none") : quoted(d.options.unavailable); }},
    {"host-timeout", "DUR", "a backend silent this long gets no traffic", "host_timeout",
     set_duration<B, &server_options::host_timeout>, show_duration<B, &server_options::host_timeout>},
    {"connect-timeout", "DUR", "backend connect timeout", "connect_timeout",
     set_duration<B, &server_options::connect_timeout>, show_duration<B, &server_options::connect_timeout>},
    {"idle-timeout", "DUR", "close proxied connections idle this long (0s: never)", "idle_timeout",
     set_duration<B, &server_options::idle_timeout>, show_duration<B, &server_options::idle_timeout>},
    {"slow-start", "DUR", "a backend that joins or comes back ramps up its\nweight over DUR (0s: off)", "slow_start",
     set_duration<B, &server_options::slow_start>, show_duration<B, &server_options::slow_start>},
    {"resolve-interval", "DUR", "how often ,resolve names are resolved again", "resolve_interval",
     set_duration<B, &server_options::resolve_interval>, show_duration<B, &server_options::resolve_interval>},
    {"nameserver", "ADDRESS[:PORT]", "where SRV names are asked, repeatable (IPv6 as\n[ADDRESS]:PORT)", "nameservers",
     [](B& s, const std::string& v) {
       s.options.nameservers.push_back(v);
       return std::string();
     },
     [](const B&) { return std::string("those of /etc/resolv.conf"); }},
    {"max-fails", "N", "failed attempts within --fail-timeout that take a\nbackend out for --fail-timeout, then one trial\nconnection decides (0: passive detection off)",
     "max_fails", set_integer<B, &server_options::max_fails>, show_number<B, &server_options::max_fails>},
    {"fail-timeout", "DUR", "the window of --max-fails and the time out; a failed\ntrial doubles it (up to 5m)", "fail_timeout",
     set_duration<B, &server_options::fail_timeout>, show_duration<B, &server_options::fail_timeout>},
    {"check-interval", "DUR", "active checks: probe every backend this often with a\nTCP connect (0s: off)", "check_interval",
     set_duration<B, &server_options::check_interval>, show_duration<B, &server_options::check_interval>},
    {"check-send", "TEXT", "a check sends TEXT once connected (\\r \\n \\t \\\\)", "check_send",
     [](B& s, const std::string& v) {
       s.options.check_send = unescape(v);
       return std::string();
     },
     [](const B&) { return std::string("none"); }},
    {"check-expect", "TEXT", "a check passes only when the reply contains TEXT\nwithin min(--connect-timeout, --check-interval)", "check_expect",
     [](B& s, const std::string& v) {
       s.options.check_expect = unescape(v);
       return std::string();
     },
     [](const B&) { return std::string("none"); }},
    {"check-rise", "N", "passing checks in a row that bring a backend up", "check_rise",
     set_integer<B, &server_options::check_rise>, show_number<B, &server_options::check_rise>},
    {"check-fall", "N", "failing checks in a row that take a backend down", "check_fall",
     set_integer<B, &server_options::check_fall>, show_number<B, &server_options::check_fall>},
    {"workers", "N", "event-loop threads", "workers", set_integer<B, &server_options::workers>,
     show_number<B, &server_options::workers>},
    {"secret-file", "FILE", "the admin port's shared secret: native peers must prove\nthey know it (HMAC-SHA256 challenge), harmony.js\nagents are refused except from --allow-legacy",
     "admin_secret", set_secret_file<B, &server_options::admin_secret>, [](const B&) { return std::string(); }},
    {"allow-legacy", "CIDR", "with --secret-file, still accept harmony.js agents\nfrom this address block; repeatable", "allow_legacy",
     [](B& s, const std::string& v) {
       s.options.allow_legacy.push_back(v);
       return std::string();
     },
     [](const B&) { return std::string(); }},
    {"max-connections", "N", "client connections open at once; more wait in the\nkernel's backlog (0: (descriptor limit - 64 -\nmax-admin-connections) / 2)",
     "max_connections", set_integer<B, &server_options::max_connections>,
     show_number<B, &server_options::max_connections>},
    {"max-conns-per-client", "N", "connections open at once from one client address;\nmore are closed at once (0: no limit)",
     "max_conns_per_client", set_integer<B, &server_options::max_conns_per_client>,
     show_number<B, &server_options::max_conns_per_client>},
    {"max-backends", "N", "registered and static backends; more are refused", "max_backends",
     set_integer<B, &server_options::max_backends>, show_number<B, &server_options::max_backends>},
    {"max-admin-connections", "N", "admin connections open at once; more are closed", "max_admin_connections",
     set_integer<B, &server_options::max_admin_connections>, show_number<B, &server_options::max_admin_connections>},
    {"max-admin-line", "N", "longest native admin line in bytes; longer: an\nerror, then the connection is closed",
     "max_admin_line", set_integer<B, &server_options::max_admin_line>,
     show_number<B, &server_options::max_admin_line>},
    {"admin-timeout", "DUR", "an admin connection silent this long is closed\n(an agent's: three missed heartbeats)",
     "admin_timeout", set_duration<B, &server_options::admin_timeout>, show_duration<B, &server_options::admin_timeout>},
    {"drain-timeout", "DUR", "on SIGTERM or SIGINT, connections in flight may\nfinish for this long (0s: stop at once)",
     "drain_timeout", set_duration<B, &server_options::drain_timeout>, show_duration<B, &server_options::drain_timeout>},
    {"state-file", "FILE", "keeps the backends agents registered across\nrestarts (see README, State file)", "state_file",
     set_text<B, &server_options::state_file>, [](const B&) { return std::string("none"); }},
    {"accept-proxy", nullptr,
     "clients come through another proxy that sends a PROXY\nprotocol header (v1 or v2) first: its address is the\nclient's; a connection without one is reset",
     "accept_proxy", set_switch<B, &server_options::accept_proxy, true>,
     show_switch<B, &server_options::accept_proxy, true>},
    {"access-log", "PATH|-", "one line per connection as it ends (see README,\nAccess log); -: stderr; reopened on SIGUSR1",
     nullptr,
     [](B& s, const std::string& v) {
       if (v.empty()) return std::string("a path, or - for stderr");
       s.access_log = v;
       return std::string();
     },
     [](const B&) { return std::string("none"); }},
    {"splice", nullptr, "relay streaming connections inside the kernel (Linux\nsplice: less CPU per byte, see README)",
     "splice", set_switch<B, &server_options::splice, true>, show_switch<B, &server_options::splice, true>},
    log_level_flag<B>,
};

const std::vector<flag<A>> agent_flags = {
    {"balancer", "HOST:PORT", "a balancer's admin address; repeatable: registers\nwith each, under one id", "balancers",
     [](A& s, const std::string& v) {
       if (!s.have_balancer) s.options.balancers.clear();
       s.have_balancer = true;
       s.options.balancers.push_back(v);
       return std::string();
     },
     [](const A& d) { return d.options.balancers.empty() ? d.options.balancer : d.options.balancers.front(); }},
    {"port", "N", "the port this backend serves on (required)", "port",
     [](A& s, const std::string& v) {
       std::string problem = set_integer<A, &client_options::port>(s, v);
       s.have_port = s.have_port || problem.empty();
       return problem;
     },
     [](const A&) { return std::string(); }},
    {"weight", "N", "relative weight", "weight", set_integer<A, &client_options::weight>,
     show_number<A, &client_options::weight>},
    {"maxconn", "N", "connection limit reported to the balancers; 0: none", "maxconn",
     set_integer<A, &client_options::maxconn>, show_number<A, &client_options::maxconn>},
    {"proxy", "VERSION", "the PROXY protocol header (v1, v2) this backend expects\nahead of each client's bytes; none: no header", "proxy",
     [](A& s, const std::string& v) {
       if (harmony::parse_proxy_protocol(v, s.options.proxy)) return "unknown version " + quoted(v) + " (none, v1, v2)";
       return std::string();
     },
     [](const A& d) { return std::string(harmony::to_string(d.options.proxy)); }},
    {"state", "STATE", "start ready, drain (no new connections) or down", "state",
     [](A& s, const std::string& v) {
       if (harmony::parse_readiness(v, s.options.state)) return "unknown state " + quoted(v) + " (ready, drain, down)";
       return std::string();
     },
     [](const A& d) { return std::string(harmony::to_string(d.options.state)); }},
    {"ack", "DUR", "heartbeat interval, at most half the host timeout", "ack", set_duration<A, &client_options::ack>,
     show_duration<A, &client_options::ack>},
    {"secret-file", "FILE", "the balancers' shared secret (their --secret-file)", nullptr,
     set_secret_file<A, &client_options::secret>, [](const A&) { return std::string(); }},
    {"host", "H", "address the balancer should connect to", "host",
     [](A& s, const std::string& v) {
       // The library reads an empty host as "as seen"; given as a flag it is a mistake.
       if (v.empty()) return quoted(v) + " is not a host name or address";
       s.options.host = v;
       return std::string();
     },
     [](const A& d) { return d.options.host.empty() ? std::string("the address it sees") : d.options.host; }},
    log_level_flag<A>,
};

// What the ctl's flags set: the admin address (as client_options::balancer, which
// check() validates) and the secret; the command comes after the flags.
struct ctl_settings {
  ctl_settings() { options.balancer = harmony::server_options{}.admin; }
  harmony::client_options options;
  harmony::duration timeout{10000};
  std::vector<std::string> command;
};
using C = ctl_settings;

const std::vector<flag<C>> ctl_flags = {
    {"admin", "HOST:PORT", "the balancer's admin address", "balancer", set_text<C, &client_options::balancer>,
     [](const C& d) { return d.options.balancer; }},
    {"secret-file", "FILE", "the shared secret, when the balancer has one", nullptr,
     set_secret_file<C, &client_options::secret>, [](const C&) { return std::string(); }},
    {"timeout", "DUR", "longest wait for the whole exchange", nullptr,
     [](C& s, const std::string& v) {
       if (harmony::parse_duration(v, s.timeout) || s.timeout.count() <= 0)
         return quoted(v) + " is not a positive duration (e.g. 500ms, 30s, 1m)";
       return std::string();
     },
     [](const C& d) { return harmony::format_duration(d.timeout); }},
};

template <class Settings>
const flag<Settings>* find_flag(const std::vector<flag<Settings>>& table, std::string_view name) {
  for (const auto& f : table)
    if (name == f.name) return &f;
  return nullptr;
}

// Applies flag `name` (without dashes) with `value` (nullptr when none was given), as
// from the command line or a configuration file's line; the library checks the option
// it set. Returns what is wrong, empty when it applied.
template <class Settings>
std::string apply_flag(const std::vector<flag<Settings>>& table, std::string_view name, const std::string* value,
                       Settings& settings) {
  const flag<Settings>* f = find_flag(table, name);
  if (!f) return "unknown option";
  if (!f->value && value) return "takes no value";
  if (f->value && !value) return "needs a value";
  std::string problem = f->apply(settings, value ? *value : std::string());
  harmony::option_problem p;
  if (problem.empty() && f->option && harmony::check(settings.options, &p) && std::string_view(p.option) == f->option)
    problem = p.reason;
  return problem;
}

// The flag that sets a library option, for naming it in an error.
template <class Settings>
std::string flag_for(const std::vector<flag<Settings>>& table, const char* option) {
  for (const auto& f : table)
    if (f.option && std::string_view(f.option) == option) return std::string("--") + f.name;
  return option;
}

template <class Settings>
void print_flags(const std::vector<flag<Settings>>& table) {
  const Settings defaults;
  const std::size_t column = 28;
  for (const auto& f : table) {
    std::string line = std::string("  --") + f.name + (f.value ? std::string(" ") + f.value : std::string());
    line += line.size() + 2 <= column ? std::string(column - line.size(), ' ') : "\n" + std::string(column, ' ');
    for (const char* c = f.help; *c; ++c) line += *c == '\n' ? "\n" + std::string(column, ' ') : std::string(1, *c);
    std::string shown = f.shown(defaults);
    if (!shown.empty()) line += f.value ? " (default " + shown + ")" : " (default)";
    std::fputs((line + "\n").c_str(), stdout);
  }
}

void print_usage() {
  std::fputs(usage_head, stdout);
  print_flags(balancer_flags);
  std::fputs(usage_agent, stdout);
  print_flags(agent_flags);
  std::fputs(usage_ctl, stdout);
  print_flags(ctl_flags);
  std::fputs(usage_tail, stdout);
}

// ---- The configuration file (--config): the flags' own table, one directive a line.
//
// A directive is a flag's long name without the dashes, then, after spaces or tabs, its
// value exactly as on the command line, to the end of the line (trailing blanks are
// not part of it). A '#' that begins a line or follows a space or a tab starts a
// comment to the end of the line; a '#' inside a word is part of the value. Blank
// lines are ignored, CRLF line ends are read as LF. Lines are applied in order, as
// their flags would be on the command line: a repeatable flag (backend, balancer)
// adds, for any other the last line wins. The command line is applied after the file:
// its flags override the file's, and its repeatable flags add to the file's.

struct configuration {
  std::string file;    // --config FILE; empty for none
  bool check = false;  // --check: validate, start nothing
  std::map<std::string, int> line_of;     // flag name -> the file's last line that set it
  std::set<std::string> on_command_line;  // the flags the command line set
  std::vector<std::pair<std::string, std::string>> given;  // the command line's flags and values, for a reload
  std::vector<bool> has_value;                             // whether each of `given` had a value
  std::vector<std::pair<int, std::string>> problems;  // "FILE:LINE: message" by its line; 0 for no line
  std::string at(int line) const { return file + ":" + std::to_string(line); }
  void add(int line, std::string message) { problems.emplace_back(line, std::move(message)); }
};

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// The directive on one line; false for a blank or comment-only line.
bool parse_directive(std::string_view line, std::string& name, std::string& value, bool& has_value) {
  std::size_t end = 0;
  while (end < line.size() && !(line[end] == '#' && (end == 0 || is_blank(line[end - 1])))) ++end;
  std::size_t begin = 0;
  while (begin < end && is_blank(line[begin])) ++begin;
  while (end > begin && is_blank(line[end - 1])) --end;
  if (begin == end) return false;
  std::size_t gap = begin;
  while (gap < end && !is_blank(line[gap])) ++gap;
  std::size_t v = gap;
  while (v < end && is_blank(line[v])) ++v;
  name.assign(line.substr(begin, gap - begin));
  value.assign(line.substr(v, end - v));
  has_value = v < end;
  return true;
}

// Applies every line of c.file to `settings`, collecting a problem for each bad line;
// a bad line changes nothing, so that the lines after it are judged on their own.
template <class Settings>
void load_config(const std::vector<flag<Settings>>& table, configuration& c, Settings& settings) {
  std::string text, problem;
  if (!read_whole_file(c.file, text, problem)) {
    c.add(0, c.file + ": cannot read the configuration: " + problem);
    return;
  }
  int number = 0;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t stop = text.find('\n', start);
    if (stop == std::string::npos) stop = text.size();
    std::string_view line(text.data() + start, stop - start);
    start = stop + 1;
    ++number;
    std::string name, value;
    bool has_value = false;
    if (!parse_directive(line, name, value, has_value)) continue;
    const std::string where = c.at(number);
    if (!find_flag(table, name)) {
      std::string bare = name.substr(std::min(name.find_first_not_of('-'), name.size()));
      if (bare != name && find_flag(table, bare))
        c.add(number, where + ": write the directive without the dashes: " + quoted(bare));
      else
        c.add(number, where + ": unknown directive " + quoted(name));
      continue;
    }
    Settings before = settings;
    problem = apply_flag(table, name, has_value ? &value : nullptr, settings);
    if (!problem.empty()) {
      settings = before;
      c.add(number, where + ": " + name + ": " + problem);
      continue;
    }
    c.line_of[name] = number;
    if constexpr (std::is_same<Settings, balancer_settings>::value)
      for (std::size_t i = before.backends.size(); i < settings.backends.size(); ++i)
      {
        settings.backends[i].origin = where + ": " + name;
        settings.backends[i].line = number;
      }
  }
}

// What check() found, blamed on the file's line that set the option last; empty when
// the command line set it or nothing did (the command line's error says it then).
template <class Settings>
std::string blame_line(const std::vector<flag<Settings>>& table, const configuration& c,
                       const harmony::option_problem& p, int& line) {
  const flag<Settings>* last = nullptr;
  line = 0;
  for (const auto& f : table) {
    if (!f.option || std::string_view(f.option) != p.option) continue;
    if (c.on_command_line.count(f.name)) return {};
    auto it = c.line_of.find(f.name);
    if (it != c.line_of.end() && it->second > line) {
      line = it->second;
      last = &f;
    }
  }
  return last ? c.at(line) + ": " + last->name + ": " + p.reason : std::string();
}

// Prints every problem found, in the order of the file's lines; exits 2 when there is
// one, and 0 after --check.
void print_problems(configuration& c) {
  std::stable_sort(c.problems.begin(), c.problems.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& p : c.problems) std::fprintf(stderr, "%s\n", p.second.c_str());
}

void report(configuration& c) {
  print_problems(c);
  const std::string what = c.file.empty() ? std::string("the command line") : "configuration " + c.file;
  if (!c.problems.empty()) {
    if (c.check) std::fprintf(stderr, "harmonyd: %s: %zu problem(s)\n", what.c_str(), c.problems.size());
    std::exit(2);
  }
  if (c.check) {
    std::printf("harmonyd: %s is valid\n", what.c_str());
    std::exit(0);
  }
}

// Reads --config FILE and --check anywhere on the command line from argv[first], then
// the file, then the command line: "--name value" or "--name=value". Returns false when
// it met --help or --version and printed the answer.
template <class Settings>
bool parse_command_line(const std::vector<flag<Settings>>& table, const char* unknown, int argc, char** argv,
                        int first, bool has_version, Settings& settings, configuration& c,
                        std::vector<std::string>* rest = nullptr) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--check") c.check = true;
    if (arg == "--config" || arg.rfind("--config=", 0) == 0) {
      std::string file = arg.size() > 8 ? arg.substr(9) : std::string();
      if (arg.size() == 8) {
        if (i + 1 >= argc) usage_error("option --config needs a value");
        file = argv[++i];
      }
      if (file.empty()) usage_error("--config: needs a file name");
      if (!c.file.empty()) usage_error("--config: given twice");
      c.file = file;
    } else if (arg.rfind("--", 0) == 0 && arg.find('=') == std::string::npos) {
      const flag<Settings>* f = find_flag(table, std::string_view(arg).substr(2));
      if (f && f->value) ++i;  // its value is not a flag, whatever it reads
    }
  }
  if (!c.file.empty()) load_config(table, c, settings);
  // A mistake on the command line ends the reading at once: the file's come first.
  auto fail = [&](const std::string& message) {
    print_problems(c);
    usage_error(message);
  };
  for (int i = first; i < argc; ++i) {
    if (rest && std::string_view(argv[i]).rfind("--", 0) != 0) {
      rest->assign(argv + i, argv + argc);
      break;
    }
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_usage();
      return false;
    }
    if (has_version && arg == "--version") {
      std::printf("harmonyd %d.%d.%d\n", HARMONY_VERSION_MAJOR, HARMONY_VERSION_MINOR, HARMONY_VERSION_PATCH);
      return false;
    }
    if (arg == "--check" || arg.rfind("--config=", 0) == 0) continue;
    if (arg == "--config") {
      ++i;
      continue;
    }
    if (arg.rfind("--", 0) != 0) fail(std::string(unknown) + " '" + arg + "'");
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
      inline_value = true;
    }
    const flag<Settings>* f = find_flag(table, name);
    if (!f) fail(std::string(unknown) + " '--" + name + "'");
    if (f->value && !inline_value) {
      if (i + 1 >= argc) fail("option --" + name + " needs a value");
      value = argv[++i];
      inline_value = true;
    }
    std::string problem = apply_flag(table, name, inline_value ? &value : nullptr, settings);
    if (!problem.empty()) fail("--" + name + ": " + problem);
    c.on_command_line.insert(name);
    c.given.emplace_back(name, value);
    c.has_value.push_back(inline_value);
  }
  // Whatever no single flag could be blamed for (ctl, whose command follows its
  // flags, only borrows client_options for where and how to connect).
  harmony::option_problem p;
  if (!rest && harmony::check(settings.options, &p)) {
    int number = 0;
    std::string line = blame_line(table, c, p, number);
    if (line.empty()) fail(flag_for(table, p.option) + ": " + p.reason);
    c.add(number, line);
  }
  return true;
}

// The file again with the command line over it, as at the start, for a reload: never
// exits, every problem is in the returned configuration's problems.
template <class Settings>
configuration reread(const std::vector<flag<Settings>>& table, const configuration& at_start, Settings& settings) {
  configuration c;
  c.file = at_start.file;
  c.check = true;  // judged, never started
  load_config(table, c, settings);
  for (std::size_t i = 0; i < at_start.given.size(); ++i) {
    const auto& given = at_start.given[i];
    std::string problem = apply_flag(table, given.first, at_start.has_value[i] ? &given.second : nullptr, settings);
    if (!problem.empty()) c.add(0, "harmonyd: --" + given.first + ": " + problem);
    c.on_command_line.insert(given.first);
  }
  harmony::option_problem p;
  if (harmony::check(settings.options, &p)) {
    int number = 0;
    std::string line = blame_line(table, c, p, number);
    c.add(number, line.empty() ? "harmonyd: " + flag_for(table, p.option) + ": " + p.reason : line);
  }
  return c;
}

// A static backend as it runs, with the id the server gave it.
struct running_backend {
  static_backend backend;
  std::string id;
};

// Adds the static backends to `balancer`, collecting a problem for each one refused;
// `statics` and `names`, when given, receive the backends as added. After --check the
// balancer is never started: a ,resolve name is not resolved then (add_backend_name
// resolves once running), but every address and option is judged as it would be.
void add_backends(harmony::server& balancer, const balancer_settings& s, configuration& c,
                  std::vector<running_backend>* statics = nullptr, std::vector<static_backend>* names = nullptr) {
  for (const auto& b : s.backends) {
    auto refuse = [&](const std::string& why) {
      c.add(b.line, (b.origin.empty() ? std::string("harmonyd: --backend") : b.origin) + ": " + quoted(b.address) +
                        ": " + why);
    };
    std::string id;
    if (b.resolve) {
      if (auto e = balancer.add_backend_name(b.address, b.options)) {
        refuse(e.message());
        continue;
      }
      if (names) names->push_back(b);
      if (!c.check)
        note(harmony::log_level::info, "backends from " + b.address + " weight " + std::to_string(b.options.weight) +
                                           ", resolved every " + harmony::format_duration(s.options.resolve_interval));
      continue;
    }
    if (auto e = balancer.add_backend(b.address, b.options, &id)) {
      refuse(e.message());
      continue;
    }
    if (statics) statics->push_back(running_backend{b, id});
    if (!c.check)
      note(harmony::log_level::info, "backend " + b.address + " weight " + std::to_string(b.options.weight) +
                                         (b.options.maxconn ? " maxconn " + std::to_string(b.options.maxconn) : "") +
                                         (b.options.backup ? " backup" : "") +
                                         (b.options.proxy != harmony::proxy_protocol::none
                                              ? std::string(" proxy ") + harmony::to_string(b.options.proxy)
                                              : "") +
                                         " id " + id);
  }
}

// What a reload compares the file with.
struct balancer_state {
  harmony::server& server;
  balancer_settings in_force;        // the options of the start or of the last reload
  const configuration& config;       // the file and the command line
  std::vector<running_backend> statics;  // the static backends by address (not ,resolve)
  std::vector<static_backend> names;     // the ,resolve ones
};

bool same_name(const static_backend& a, const static_backend& b) {
  return a.address == b.address && a.options.weight == b.options.weight;
}

// SIGHUP: the file is read again with the command line over it, as at the start. A
// file with a problem is refused, logged line by line, and nothing changes. Otherwise
// the options are applied to the running server (server::reconfigure: a new listen
// address that cannot be bound refuses the reload), the static backends follow the
// file (added, removed, re-weighted in place, re-added for a changed maxconn or
// backup), a new ,resolve name is followed, and the log level is taken; what only a
// restart changes is logged as waiting for one.
void reload(balancer_state& st) {
  const std::string& file = st.config.file;
  if (file.empty()) {
    note(harmony::log_level::warn, "SIGHUP: no --config file to reload");
    return;
  }
  note(harmony::log_level::info, "SIGHUP: reloading " + file);
  balancer_settings fresh;
  configuration c = reread(balancer_flags, st.config, fresh);
  {
    harmony::server probe(fresh.options);  // never started: judges the backends only
    add_backends(probe, fresh, c);
  }
  if (!c.problems.empty()) {
    std::stable_sort(c.problems.begin(), c.problems.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& p : c.problems) note(harmony::log_level::error, "reload refused: " + p.second);
    note(harmony::log_level::error, "reload refused: " + file + " has " + std::to_string(c.problems.size()) +
                                        " problem(s); the configuration in force is unchanged");
    return;
  }
  fresh.options.on_access = st.in_force.options.on_access;  // the daemon's, not the file's
  std::vector<std::string> needs_restart;
  if (auto e = st.server.reconfigure(fresh.options, &needs_restart)) {
    note(harmony::log_level::error, "reload refused: " + e.message() + "; the configuration in force is unchanged");
    return;
  }
  std::vector<std::string> restart;
  for (const auto& option : needs_restart) restart.push_back(flag_for(balancer_flags, option.c_str()));
  // What changed live, compared as --help would show it.
  std::vector<std::string> applied;
  std::set<std::string> options_seen;
  for (const auto& f : balancer_flags) {
    if (!f.option || f.apply == set_log_level<B> || f.shown(st.in_force) == f.shown(fresh)) continue;
    std::string flag = std::string("--") + f.name;
    if (std::find(restart.begin(), restart.end(), flag_for(balancer_flags, f.option)) != restart.end()) continue;
    if (options_seen.insert(f.option).second) applied.push_back(flag);
  }
  st.in_force = fresh;
  int added = 0, removed = 0, reweighted = 0, readded = 0, failed = 0;
  std::vector<bool> kept(st.statics.size(), false);
  std::vector<running_backend> next;
  auto add = [&](const static_backend& b, int& count) {
    std::string id;
    if (auto e = st.server.add_backend(b.address, b.options, &id)) {
      note(harmony::log_level::error, "reload: backend " + b.address + ": " + e.message());
      ++failed;
      return;
    }
    next.push_back(running_backend{b, id});
    ++count;
  };
  std::vector<const static_backend*> fresh_names;
  for (const auto& b : fresh.backends) {
    if (b.resolve) {
      fresh_names.push_back(&b);
      continue;
    }
    std::size_t k = 0;
    while (k < st.statics.size() && (kept[k] || st.statics[k].backend.address != b.address)) ++k;
    if (k == st.statics.size()) {
      add(b, added);
      continue;
    }
    kept[k] = true;
    running_backend r = st.statics[k];
    if (r.backend.options.maxconn != b.options.maxconn || r.backend.options.backup != b.options.backup ||
        r.backend.options.proxy != b.options.proxy) {
      st.server.remove_backend(r.id);  // its open connections finish
      add(b, readded);
      continue;
    }
    if (r.backend.options.weight != b.options.weight) {
      if (auto e = st.server.set_weight(r.id, b.options.weight)) {
        note(harmony::log_level::error, "reload: backend " + b.address + ": " + e.message());
        ++failed;
      } else {
        r.backend.options.weight = b.options.weight;
        ++reweighted;
      }
    }
    next.push_back(r);
  }
  for (std::size_t k = 0; k < st.statics.size(); ++k)
    if (!kept[k]) {
      st.server.remove_backend(st.statics[k].id);
      ++removed;
    }
  st.statics = std::move(next);
  // A new ,resolve name is followed; one that is gone or changed needs a restart.
  for (const auto* b : fresh_names)
    if (std::none_of(st.names.begin(), st.names.end(), [&](const static_backend& n) { return same_name(n, *b); })) {
      if (auto e = st.server.add_backend_name(b->address, b->options)) {
        note(harmony::log_level::error, "reload: backend " + b->address + ",resolve: " + e.message());
        ++failed;
      } else {
        st.names.push_back(*b);
        ++added;
      }
    }
  for (const auto& n : st.names)
    if (std::none_of(fresh_names.begin(), fresh_names.end(), [&](const static_backend* b) { return same_name(n, *b); }))
      restart.push_back("backend " + n.address + ",resolve");
  harmony::log_level level = fresh.options.level;
  daemon_level = level;
  note(harmony::log_level::info, "reloaded " + file + ": " + std::to_string(added) + " backend(s) added, " +
                                     std::to_string(removed) + " removed, " + std::to_string(reweighted) +
                                     " re-weighted, " + std::to_string(readded) + " re-added; log level " +
                                     harmony::to_string(level) +
                                     (failed ? "; " + std::to_string(failed) + " change(s) failed" : std::string()));
  if (!applied.empty()) {
    std::string list;
    for (const auto& a : applied) list += (list.empty() ? "" : ", ") + a;
    note(harmony::log_level::info, "reload: applied " + list);
  }
  if (fresh.access_log != access_log.path() && !fresh.access_log.empty()) {
    // A new path is taken at once; an access log is turned on or off only by a restart.
    std::string problem = access_log.path().empty() ? std::string("not on since the start: needs a restart")
                                                    : access_log.open(fresh.access_log);
    if (problem.empty()) note(harmony::log_level::info, "reload: access log now " + fresh.access_log);
    else note(harmony::log_level::error, "reload: access log: " + problem);
  }
  if (!restart.empty()) {
    std::string list;
    for (const auto& r : restart) list += (list.empty() ? "" : ", ") + r;
    note(harmony::log_level::warn, "reload: not applied until a restart: " + list);
  }
}

// ---- SIGUSR2: an upgrade. The successor is this program again (the binary at the
// path it was started from, read at the start: the file may be replaced since), with
// the same arguments and, in HARMONYD_INHERIT, what it takes over:
//   listen=FD[,FD...];admin=FD;stats=FD;ready=FD;state=PATH
// (admin and stats only when there are such ports). It adopts the listeners, restores
// the registry from PATH, and once it serves writes one byte on `ready`; only then does
// this process hand over (its admin and stats ports close) and drain.
constexpr const char* inherit_variable = "HARMONYD_INHERIT";
constexpr int upgrade_ready_seconds = 15;  // a successor that does not serve by then is killed

std::string self_path;                 // the binary, read at the start
std::vector<std::string> self_arguments;

// What HARMONYD_INHERIT gave this process (a successor), read once at the start.
struct inheritance {
  harmony::inherited_sockets sockets;
  int ready = -1;
  std::string state;
};

#if !defined(_WIN32)
void remember_self(int argc, char** argv) {
  char path[4096];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  self_path = n > 0 ? std::string(path, static_cast<std::size_t>(n)) : std::string(argv[0]);
  self_arguments.assign(argv, argv + argc);
}

// Parses HARMONYD_INHERIT; false (with what is wrong) when it is malformed.
bool parse_inheritance(const std::string& text, inheritance& out, std::string& problem) {
  auto descriptor = [&](const std::string& v, std::int64_t& fd) {
    long long n = 0;
    if (harmony::parse_integer(v, 0, std::numeric_limits<int>::max(), n)) return false;
    fd = n;
    return true;
  };
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find(';', at);
    std::string item = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? text.size() : end + 1;
    std::size_t eq = item.find('=');
    std::string key = item.substr(0, eq), value = eq == std::string::npos ? std::string() : item.substr(eq + 1);
    std::int64_t fd = -1;
    bool ok = true;
    if (key == "listen") {
      for (std::size_t from = 0; ok && from <= value.size();) {
        std::size_t comma = value.find(',', from);
        ok = descriptor(value.substr(from, comma == std::string::npos ? std::string::npos : comma - from), fd);
        if (ok) out.sockets.listen.push_back(fd);
        from = comma == std::string::npos ? value.size() + 1 : comma + 1;
      }
    } else if (key == "admin") {
      ok = descriptor(value, out.sockets.admin);
    } else if (key == "stats") {
      ok = descriptor(value, out.sockets.stats);
    } else if (key == "ready") {
      ok = descriptor(value, fd);
      out.ready = static_cast<int>(fd);
    } else if (key == "state") {
      out.state = value;
    } else {
      ok = false;
    }
    if (!ok) {
      problem = "malformed item " + quoted(item);
      return false;
    }
  }
  if (out.sockets.listen.empty()) problem = "no listen socket";
  return problem.empty();
}

std::string inheritance_text(const harmony::inherited_sockets& handed, int ready, const std::string& state) {
  std::string text = "listen=";
  for (std::size_t i = 0; i < handed.listen.size(); ++i) text += (i ? "," : "") + std::to_string(handed.listen[i]);
  if (handed.admin >= 0) text += ";admin=" + std::to_string(handed.admin);
  if (handed.stats >= 0) text += ";stats=" + std::to_string(handed.stats);
  return text + ";ready=" + std::to_string(ready) + ";state=" + state;
}

void close_handed(const harmony::inherited_sockets& handed) {
  for (std::int64_t fd : handed.listen) ::close(static_cast<int>(fd));
  if (handed.admin >= 0) ::close(static_cast<int>(handed.admin));
  if (handed.stats >= 0) ::close(static_cast<int>(handed.stats));
}

// Waits for the successor's ready byte: true once it serves; false (logged) when it
// exits first or does not serve in time (then it is killed).
bool successor_serves(pid_t pid, int ready) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(upgrade_ready_seconds);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{ready, POLLIN, 0};
    int n = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) {
      char byte = 0;
      if (::read(ready, &byte, 1) == 1) return true;
      int status = 0;  // closed without a byte: it has exited, or is about to
      ::waitpid(pid, &status, 0);
      std::string how = WIFEXITED(status) ? "with status " + std::to_string(WEXITSTATUS(status))
                                          : "on signal " + std::to_string(WTERMSIG(status));
      note(harmony::log_level::error,
           "upgrade failed: PID " + std::to_string(pid) + " exited " + how + " before it served; still serving");
      return false;
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    note(harmony::log_level::error, "upgrade failed: PID " + std::to_string(pid) + " did not serve within " +
                                        std::to_string(upgrade_ready_seconds) + " s (killed); still serving");
    return false;
  }
}

// SIGUSR2: starts the successor; true once it serves (this process then hands over).
bool upgrade(harmony::server& server, const balancer_settings& in_force) {
  note(harmony::log_level::info, "SIGUSR2: upgrading to " + self_path);
  harmony::inherited_sockets handed;
  if (std::error_code e = server.hand_out(handed)) {
    note(harmony::log_level::error, "upgrade failed: cannot hand out the listeners: " + e.message() + "; still serving");
    return false;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string state = in_force.options.state_file.empty()
                          ? std::string(tmp && *tmp ? tmp : "/tmp") + "/harmonyd-upgrade-" + std::to_string(::getpid()) + ".state"
                          : in_force.options.state_file + ".upgrade";
  int ready[2] = {-1, -1};
  std::string problem;
  if (std::error_code e = server.save_state(state)) problem = "cannot write " + state + ": " + e.message();
  else if (::pipe(ready) != 0 || ::fcntl(ready[0], F_SETFD, FD_CLOEXEC) != 0) problem = std::strerror(errno);
  pid_t pid = -1;
  if (problem.empty()) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, inherit_variable, std::strlen(inherit_variable)) != 0) env.emplace_back(*e);
    env.push_back(std::string(inherit_variable) + "=" + inheritance_text(handed, ready[1], state));
    std::vector<char*> envp, argv;
    for (auto& v : env) envp.push_back(&v[0]);
    envp.push_back(nullptr);
    for (auto& a : self_arguments) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int e = ::posix_spawn(&pid, self_path.c_str(), nullptr, nullptr, argv.data(), envp.data());
    if (e != 0) problem = "cannot start " + self_path + ": " + std::strerror(e);
  }
  close_handed(handed);
  if (ready[1] >= 0) ::close(ready[1]);
  bool serves = false;
  if (problem.empty()) {
    note(harmony::log_level::info, "upgrade: new process PID " + std::to_string(pid));
    serves = successor_serves(pid, ready[0]);
  } else {
    note(harmony::log_level::error, "upgrade failed: " + problem + "; still serving");
  }
  if (ready[0] >= 0) ::close(ready[0]);
  std::remove(state.c_str());  // read by the successor before it served, or of no use
  if (serves)
    note(harmony::log_level::info, "upgrade: PID " + std::to_string(pid) + " serves: handing over, then draining");
  return serves;
}

// A successor: takes what HARMONYD_INHERIT says into the options; exits 2 when malformed.
void take_inheritance(harmony::server_options& options, inheritance& got) {
  const char* text = std::getenv(inherit_variable);
  if (!text) return;
  std::string problem;
  if (!parse_inheritance(text, got, problem)) {
    std::fprintf(stderr, "harmonyd: %s: %s\n", inherit_variable, problem.c_str());
    std::exit(2);
  }
  ::unsetenv(inherit_variable);
  options.inherited = got.sockets;
  options.restore_from = got.state;
}

// A successor serves: the process before may hand over.
void tell_ready(const inheritance& got) {
  if (got.ready < 0) return;
  note(harmony::log_level::info, "upgrade: serving in place of PID " + std::to_string(::getppid()));
  ssize_t n = ::write(got.ready, "1", 1);
  (void)n;  // a process before that is gone kills its successor's wait, not this one
  ::close(got.ready);
}
#endif

int run_balancer(int argc, char** argv) {
  balancer_settings s;
  configuration c;
  if (!parse_command_line(balancer_flags, "unknown option", argc, argv, 1, true, s, c)) return 0;
  if (!c.check) s.options.log = log_filtered;
  daemon_level = s.options.level;
  inheritance inherited;
#if !defined(_WIN32)
  remember_self(argc, argv);
  if (!c.check) take_inheritance(s.options, inherited);
#endif
  if (!s.access_log.empty() && !c.check) {
    std::string problem = access_log.open(s.access_log);
    if (!problem.empty()) {
      std::fprintf(stderr, "harmonyd: --access-log %s\n", problem.c_str());
      return 2;
    }
    s.options.on_access = [](const harmony::access_entry& e) { access_log.write(e); };
  }
  harmony::server balancer(s.options);
  balancer_state state{balancer, s, c, {}, {}};
  add_backends(balancer, s, c, &state.statics, &state.names);
  report(c);  // exits after --check or on a problem
  return serve_until_stopped(
      "harmonyd",
      [&](harmony::option_problem* p) {
        std::error_code e = balancer.start(p);
#if !defined(_WIN32)
        if (!e) tell_ready(inherited);
#endif
        return e;
      },
      [&](bool upgraded) {
        if (upgraded) balancer.hand_over(state.in_force.options.drain_timeout);
        else balancer.shutdown();
      },
      [&] { balancer.stop(); }, [&] { reload(state); },
      [&] {
#if !defined(_WIN32)
        return upgrade(balancer, state.in_force);
#else
        return false;
#endif
      },
      [](const char* option) { return flag_for(balancer_flags, option); });
}

int run_agent(int argc, char** argv) {
  agent_settings s;
  configuration c;
  if (!parse_command_line(agent_flags, "unknown agent option", argc, argv, 2, false, s, c)) return 0;
  if (!s.have_port) {
    if (c.file.empty()) usage_error("agent: --port N is required (the port this backend serves on)");
    c.add(0, c.file + ": agent: port N is required (the port this backend serves on)");
  }
  report(c);
  s.options.log = log_filtered;
  daemon_level = s.options.level;
  harmony::client agent(s.options);
  return serve_until_stopped(
      "harmonyd agent", [&](harmony::option_problem*) { return agent.start(); }, [&](bool) { agent.close(); }, [] {},
      [] { note(harmony::log_level::warn, "SIGHUP: an agent does not reload; restart it to apply a change"); },
      [] {
        note(harmony::log_level::warn, "SIGUSR2: an agent does not upgrade; restart it to run a new binary");
        return false;
      },
      [](const char* option) { return flag_for(agent_flags, option); });
}

// harmonyd ctl: one command, its reply on stdout.
int run_ctl(int argc, char** argv) {
  ctl_settings s;
  configuration c;
  if (!parse_command_line(ctl_flags, "unknown ctl option", argc, argv, 2, false, s, c, &s.command)) return 0;
  if (s.command.empty()) usage_error("ctl: a command is required (e.g. list, stats, drain ID; 'help' lists them)");
  std::string line;
  for (const std::string& word : s.command) line += (line.empty() ? "" : " ") + word;
  if (line.find_first_of("\r\n") != std::string::npos) usage_error("ctl: the command is one line");
  std::string reply;
  std::error_code e = harmony::admin_command(s.options.balancer, line, &reply, s.options.secret, s.timeout);
  std::fputs(reply.c_str(), stdout);
  std::fflush(stdout);
  if (!e) return 0;
  if (e == harmony::errc::protocol || e == harmony::errc::unauthorized) {
    if (reply.empty()) std::fprintf(stderr, "harmonyd ctl: %s: %s\n", s.options.balancer.c_str(), e.message().c_str());
    return 1;
  }
  std::fprintf(stderr, "harmonyd ctl: cannot reach %s: %s\n", s.options.balancer.c_str(), e.message().c_str());
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "agent") return run_agent(argc, argv);
  if (argc > 1 && std::string(argv[1]) == "ctl") return run_ctl(argc, argv);
  return run_balancer(argc, argv);
}
