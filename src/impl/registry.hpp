namespace harmony {
namespace detail {

// >>registry  the backend table: sans-IO, shared between loops through locked<>
// The backend table. It holds no OS type: addresses are resolved_address, ids
// come from an injected generator, and it has no lock of its own. Every event
// loop shares one, so the server keeps it in a locked<registry> and each call
// site takes the lock, once and briefly, for a pick, a release or an admin change.
struct pick_result {
  lease chosen;
  resolved_address to;
};

struct registry_limits {
  std::size_t backends = 100000;
  std::size_t affinity_entries = 100000;
  std::int64_t affinity_ttl_ms = 3600000;
};

// Makes a new backend id (32 uppercase hex digits, see is_backend_id). The server
// injects the OS random source; tests inject a counter.
using id_generator = std::function<std::string()>;

// A value of T reached only under its mutex: lock() returns a guard that acts as
// a pointer to T and unlocks when it goes, e.g. `backends.lock()->pick(...)`.
template <class T>
class locked {
 public:
  template <class... Args>
  explicit locked(Args&&... args) : value_(std::forward<Args>(args)...) {}
  locked(const locked&) = delete;
  locked& operator=(const locked&) = delete;

  class guard {
   public:
    guard(std::mutex& m, T& v) : lock_(m), value_(v) {}
    T* operator->() const noexcept { return &value_; }
    T& operator*() const noexcept { return value_; }

   private:
    std::unique_lock<std::mutex> lock_;
    T& value_;
  };
  guard lock() { return guard(mutex_, value_); }

 private:
  std::mutex mutex_;
  T value_;
};

class registry {
 public:
  using limits = registry_limits;
  registry(algorithm a, duration host_timeout, bool persistent, limits l, id_generator make_id)
      : selector_(a),
        host_timeout_ms_(host_timeout.count()),
        persistent_(persistent),
        limits_(l),
        affinities_(affinity_table::limits{l.affinity_entries, l.affinity_ttl_ms}),
        make_id_(std::move(make_id)) {}

  // Whether a weight is in the one range the library accepts (>>types).
  static bool valid_weight(int weight) noexcept { return weight >= min_weight && weight <= max_weight; }

  // Adds a backend. `expires`: it must ack within the host timeout to stay eligible
  // (registered agents); static backends added through the API never expire.
  // `wanted_id`: an id the backend already had (an agent rejoining a balancer
  // that restarted), kept when no other backend has it.
  std::error_code add(const endpoint& at, const resolved_address* resolved, int weight, bool expires,
                      std::string* id_out, std::int64_t now, std::string_view wanted_id = {}) {
    if (!valid_weight(weight)) return make_error_code(errc::bad_option);
    if (by_id_.size() >= limits_.backends) return make_error_code(errc::too_many_backends);
    if (!wanted_id.empty() && (!is_backend_id(wanted_id) || by_id_.count(std::string(wanted_id))))
      wanted_id = {};
    std::string id(wanted_id);
    // A generator that keeps repeating itself must not hang the balancer.
    for (int tries = 0; id.empty() || by_id_.count(id); ++tries) {
      if (tries == 64 || !make_id_) return make_error_code(errc::bad_option);
      id = make_id_();
    }
    std::uint32_t slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(records_.size());
      records_.emplace_back();
    }
    record& r = records_[slot];
    std::uint32_t generation = r.generation;
    r = record{};
    r.generation = generation;
    r.used = true;
    r.id = std::move(id);
    r.at = at;
    if (resolved) {
      r.to = *resolved;
      r.routable = at.port != 0;
    }
    r.weight = weight;
    r.expires = expires;
    r.last_ack = now;
    by_id_.emplace(r.id, slot);
    refresh(slot, now);
    if (id_out) *id_out = r.id;
    return {};
  }

  std::error_code remove(std::string_view id) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    by_id_.erase(records_[slot].id);
    selector_.reset(slot);
    record& r = records_[slot];
    r.used = false;
    ++r.generation;  // open leases of the old backend no longer count against the slot
    r.id.clear();
    free_slots_.push_back(slot);
    return {};
  }

  std::error_code set_weight(std::string_view id, int weight) {
    if (!valid_weight(weight)) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      r.weight = weight;
      selector_.set_weight(slot, weight);
    });
  }

  std::error_code drain(std::string_view id, bool on, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) { r.draining = on; });
  }

  // Sets where the backend is reached (host and port); a port of 0 makes it unroutable.
  std::error_code set_address(std::string_view id, const endpoint& at, const resolved_address& resolved,
                              std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      r.at = at;
      r.to = resolved;
      r.routable = at.port != 0;
    });
  }

  std::error_code ack(std::string_view id, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) { r.last_ack = now; });
  }

  // An agent's live connection keeps its backend online; when it drops, the
  // backend gets no new connections until the agent registers again.
  std::error_code set_online(std::string_view id, bool online, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      r.online = online;
      if (online) r.last_ack = now;
    });
  }

  // ---- Reported by the backend's agent (`report`, issue 12). Minimal on purpose:
  // set_maxconn only stores the limit; enforcing it in pick() is the registry's
  // per-backend maxconn work, with which the lead merges this.
  std::error_code set_maxconn(std::string_view id, int maxconn) {
    if (maxconn < 0 || maxconn > max_maxconn) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t) { r.maxconn = maxconn; });
  }
  bool maxconn_of(std::string_view id, int& out) const {
    std::uint32_t slot;
    if (!find(id, slot)) return false;
    out = records_[slot].maxconn;
    return true;
  }
  // The agent's own readiness: drain and down get no new connections (open ones
  // finish), ready is eligible again. Independent of an operator's drain.
  std::error_code set_readiness(std::string_view id, readiness state, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) { r.reported = state; });
  }
  // ---- end of the agent's report

  // The address a backend registered from, to derive where it serves.
  bool address_of(std::string_view id, endpoint& at) const {
    std::uint32_t slot;
    if (!find(id, slot)) return false;
    at = records_[slot].at;
    return true;
  }

  bool known(std::string_view id) const {
    std::uint32_t slot;
    return find(id, slot);
  }

  void set_algorithm(algorithm a) { selector_.set_algorithm(a); }

  // Chooses a backend for a client (by its host key) and counts the connection
  // against it. `tried` lists earlier failed attempts of this connection. With
  // persistence, the client's remembered backend comes first while it is eligible
  // and untried; otherwise the selector chooses and the table remembers the choice.
  bool pick(std::int64_t now, std::string_view client_key, const std::vector<lease>& tried, pick_result& out) {
    std::uint32_t chosen = selector::npos;
    auto was_tried = [&](std::uint32_t slot) {
      for (const lease& l : tried)
        if (l.slot == slot && l.generation == records_[slot].generation) return true;
      return false;
    };
    bool sticky = persistent_ && !client_key.empty();
    if (sticky) {
      const lease* l = affinities_.find(client_key, now);
      if (l && current(*l) && eligible(l->slot, now) && !was_tried(l->slot)) chosen = l->slot;
    }
    if (chosen == selector::npos) {
      chosen = selector_.pick([&](std::uint32_t slot) {
        if (!eligible(slot, now)) return selector::verdict::evict;
        return was_tried(slot) ? selector::verdict::skip : selector::verdict::take;
      });
      if (chosen == selector::npos) return false;
    }
    record& r = records_[chosen];
    ++r.active;
    ++r.total;
    selector_.set_active(chosen, r.active);
    out.chosen = lease{chosen, r.generation};
    out.to = r.to;
    if (sticky) affinities_.remember(client_key, out.chosen, now);
    return true;
  }

  void release(const lease& l, bool failed) {
    if (!l.valid() || !current(l)) return;
    record& r = records_[l.slot];
    if (r.active > 0) --r.active;
    if (failed) ++r.failures;
    selector_.set_active(l.slot, r.active);
  }

  std::string id_of(const lease& l) const { return current(l) ? records_[l.slot].id : std::string(); }

  std::vector<backend_info> list(std::int64_t now) const {
    std::vector<backend_info> out;
    out.reserve(by_id_.size());
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot) {
      const record& r = records_[slot];
      if (!r.used) continue;
      backend_info b;
      b.id = r.id;
      b.address = r.at;
      b.weight = r.weight;
      b.active = r.active;
      b.total = r.total;
      b.failures = r.failures;
      b.eligible = eligible(slot, now);
      b.draining = r.draining;
      b.state = state_of(slot, now);
      out.push_back(std::move(b));
    }
    return out;
  }

  std::size_t size() const noexcept { return by_id_.size(); }
  std::size_t affinity_size() const noexcept { return affinities_.size(); }

 private:
  struct record {
    std::string id;
    endpoint at;
    resolved_address to;
    bool used = false;
    bool routable = false;
    bool draining = false;
    bool expires = false;
    bool online = true;
    int weight = default_weight;
    int active = 0;
    std::uint64_t total = 0;
    std::uint64_t failures = 0;
    std::int64_t last_ack = 0;
    std::uint32_t generation = 0;
    int maxconn = 0;                        // reported by the agent; 0: no limit (issue 12)
    readiness reported = readiness::ready;  // reported by the agent (issue 12)
  };

  // Changes one backend, then re-judges its eligibility at `now` (a negative
  // `now` leaves eligibility alone).
  template <class Change>
  std::error_code update(std::string_view id, std::int64_t now, Change&& change) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    change(records_[slot], slot);
    if (now >= 0) refresh(slot, now);
    return {};
  }

  bool find(std::string_view id, std::uint32_t& slot) const {
    auto it = by_id_.find(std::string(id));
    if (it == by_id_.end()) return false;
    slot = it->second;
    return true;
  }
  // Whether a lease still names the backend it was taken from.
  bool current(const lease& l) const noexcept {
    return l.slot < records_.size() && records_[l.slot].generation == l.generation;
  }
  bool eligible(std::uint32_t slot, std::int64_t now) const noexcept {
    const record& r = records_[slot];
    return r.used && r.routable && r.online && !r.draining && r.reported == readiness::ready &&
           (!r.expires || now - r.last_ack <= host_timeout_ms_);
  }
  const char* state_of(std::uint32_t slot, std::int64_t now) const noexcept {
    const record& r = records_[slot];
    if (!r.routable) return "no-port";
    if (!r.online) return "offline";
    if (r.expires && now - r.last_ack > host_timeout_ms_) return "expired";
    if (r.reported == readiness::down) return "down";
    if (r.draining || r.reported == readiness::drain) return "draining";
    return "up";
  }
  void refresh(std::uint32_t slot, std::int64_t now) {
    const record& r = records_[slot];
    if (eligible(slot, now)) selector_.insert(slot, r.weight, r.active);
    else selector_.erase(slot);
  }

  selector selector_;
  std::int64_t host_timeout_ms_;
  bool persistent_;
  limits limits_;
  affinity_table affinities_;
  id_generator make_id_;
  std::vector<record> records_;
  std::vector<std::uint32_t> free_slots_;
  std::unordered_map<std::string, std::uint32_t> by_id_;
};

}  // namespace detail
}  // namespace harmony
