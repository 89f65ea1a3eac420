#include <condition_variable>

namespace harmony {
namespace detail {

// >>resolver  the server's resolver thread: getaddrinfo and SRV queries off the event loops
// Every address a host name has for TCP, IPv4 and IPv6, in the resolver's order.
inline std::error_code lookup_all(const endpoint& at, std::vector<resolved_address>& out) {
  out.clear();
  if (at.host.empty()) return make_error_code(errc::resolve_failed);
  addrinfo* list = lookup_stream(at, false);
  if (!list) return make_error_code(errc::resolve_failed);
  for (addrinfo* i = list; i; i = i->ai_next) {
    if (i->ai_family != AF_INET && i->ai_family != AF_INET6) continue;
    address a;
    std::memcpy(&a.storage, i->ai_addr, std::min<std::size_t>(i->ai_addrlen, sizeof a.storage));
    a.length = static_cast<socklen_t>(i->ai_addrlen);
    out.push_back(to_resolved(a));
  }
  ::freeaddrinfo(list);
  return out.empty() ? make_error_code(errc::resolve_failed) : std::error_code{};
}

// One name to resolve, and what a resolution of it gave.
struct resolver_name {
  endpoint at;  // for SRV, the name and port 0
  int weight = default_weight;
  bool srv = false;  // an SRV name (is_srv_name): ports, weights and roles from its records
  int maxconn = 0;   // of each backend (backend_options::maxconn)
  bool backup = false;
  proxy_protocol proxy = proxy_protocol::none;
};
struct resolution {
  std::size_t index = 0;  // the name's place in the order names were given
  resolver_name name;
  std::error_code error;
  std::vector<discovered_address> addresses;
};

// How long one name server has to answer, and how many times each is asked.
inline constexpr duration dns_server_timeout{1000};
inline constexpr int dns_rounds = 2;

// An SRV query to each name server in turn (`servers`, else /etc/resolv.conf's),
// over TCP when the UDP answer is truncated. The first server that answers
// decides: a DNS error or an empty answer is a failure, not a cue to ask the next.
inline std::error_code lookup_srv(const std::string& name, const std::vector<endpoint>& servers,
                                  std::vector<discovered_address>& out) {
  out.clear();
  std::vector<endpoint> from = servers;
  if (from.empty()) {
#if !defined(_WIN32)
    std::string text;
    if (FILE* f = std::fopen("/etc/resolv.conf", "r")) {
      char chunk[4096];
      std::size_t n;
      while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0 && text.size() < (1u << 20)) text.append(chunk, n);
      std::fclose(f);
    }
    from = parse_resolv_conf(text);
#endif
  }
  if (from.empty()) return make_error_code(errc::resolve_failed);  // Windows: name servers must be given
  std::uint16_t id = 0;
  std::string query, reply;
  for (int round = 0; round < dns_rounds; ++round) {
    for (const endpoint& server : from) {
      random_bytes(&id, sizeof id);
      if (!dns_encode_query(id, name, dns_type_srv, query)) return make_error_code(errc::bad_address);
      dns_answer answer;
      if (exchange_once(server, false, query, dns_server_timeout, reply) ||
          dns_decode_answer(reply, id, name, dns_type_srv, answer))
        continue;
      if (answer.truncated &&
          (exchange_once(server, true, query, dns_server_timeout, reply) ||
           dns_decode_answer(reply, id, name, dns_type_srv, answer) || answer.truncated))
        continue;
      if (answer.rcode != 0) return make_error_code(errc::resolve_failed);
      return srv_backends(answer, lookup_all, out);
    }
  }
  return make_error_code(errc::resolve_failed);
}

// What the resolver thread calls for each name: SRV names through lookup_srv,
// host names through getaddrinfo, each address at the name's port and weight.
inline std::error_code lookup_name(const resolver_name& name, const std::vector<endpoint>& servers,
                                   std::vector<discovered_address>& out) {
  if (name.srv) {
    std::error_code e = lookup_srv(name.at.host, servers, out);
    for (discovered_address& a : out) a.backup = a.backup || name.backup;
    return e;
  }
  out.clear();
  std::vector<resolved_address> found;
  std::error_code e = lookup_all(name.at, found);
  for (const resolved_address& a : found) out.push_back(discovered_address{a, name.weight, name.backup});
  return e;
}

// How long stop() waits for a lookup in progress before it leaves the thread to
// end on its own (getaddrinfo cannot be interrupted).
inline constexpr duration resolver_stop_wait{1000};

// One thread per server that resolves every name, then again every interval (at
// once when a name is added), and hands each result to `deliver` — on that thread,
// so deliver only posts it to an event loop. Everything the thread touches is in a
// state it shares, so a thread left behind by stop() touches nothing of its owner's
// and never delivers again.
class resolver {
 public:
  using lookup_function = std::function<std::error_code(const resolver_name&, std::vector<discovered_address>&)>;
  using deliver_function = std::function<void(resolution)>;

  resolver(duration interval, lookup_function lookup, deliver_function deliver) : state_(std::make_shared<state>()) {
    state_->interval = interval;
    state_->lookup = std::move(lookup);
    state_->deliver = std::move(deliver);
  }
  ~resolver() { stop(resolver_stop_wait); }
  resolver(const resolver&) = delete;
  resolver& operator=(const resolver&) = delete;

  void start(std::vector<resolver_name> names) {
    state_->names = std::move(names);
    std::shared_ptr<state> s = state_;
    thread_ = std::thread([s] { run(*s); });
  }

  // Adds a name; it is resolved at once.
  void add(resolver_name name) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->names.push_back(std::move(name));
    state_->wake = true;
    state_->changed.notify_all();
  }

  // Stops and joins the thread. When a lookup is still running after `bound`, the
  // thread is detached instead and ends when the lookup returns, delivering nothing:
  // returns false then. Idempotent.
  bool stop(duration bound) {
    if (!thread_.joinable()) return true;
    bool done;
    {
      std::unique_lock<std::mutex> lock(state_->mutex);
      state_->stopping = true;
      state_->changed.notify_all();
      done = state_->changed.wait_for(lock, bound, [this] { return state_->done; });
    }
    if (done) thread_.join();
    else thread_.detach();
    return done;
  }

 private:
  struct state {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<resolver_name> names;
    duration interval{};
    lookup_function lookup;
    deliver_function deliver;
    bool wake = false;
    bool stopping = false;
    bool done = false;
  };

  static void run(state& s) {
    block_sigpipe_on_this_thread();  // a lookup over TCP writes to a socket
    std::unique_lock<std::mutex> lock(s.mutex);
    while (!s.stopping) {
      s.wake = false;
      std::vector<resolver_name> names = s.names;
      for (std::size_t i = 0; i < names.size() && !s.stopping; ++i) {
        resolution r;
        r.index = i;
        r.name = names[i];
        lock.unlock();
        r.error = s.lookup(r.name, r.addresses);
        lock.lock();
        if (!s.stopping) s.deliver(std::move(r));  // under the lock: stop() then knows none follows
      }
      s.changed.wait_for(lock, s.interval, [&] { return s.stopping || s.wake; });
    }
    s.done = true;
    s.changed.notify_all();
  }

  std::shared_ptr<state> state_;
  std::thread thread_;
};

}  // namespace detail
}  // namespace harmony
