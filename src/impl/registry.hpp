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
  // No pick, but only because the backends that could serve are at their maxconn:
  // the connection may wait for a release instead of being turned away.
  bool full = false;
  // Health (>>health): this connection is the trial of a backend that failed, and
  // whether its outcome must be reported (a trial, or failures are being counted).
  bool trial = false;
  bool watch = false;
  proxy_protocol proxy = proxy_protocol::none;  // the header the chosen backend is sent first
};

// One kept backend (--state-file, >>state-file) and the address it is reached at; the
// server turns the address into text and back, the registry never does.
struct kept_backend {
  state_record record;
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
    guard(std::mutex& m, T& v, const std::function<void(T&, std::unique_lock<std::mutex>&)>& after)
        : lock_(m), value_(v), after_(after) {}
    ~guard() {
      if (after_) after_(value_, lock_);
    }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;
    T* operator->() const noexcept { return &value_; }
    T& operator*() const noexcept { return value_; }

   private:
    std::unique_lock<std::mutex> lock_;
    T& value_;
    const std::function<void(T&, std::unique_lock<std::mutex>&)>& after_;
  };
  guard lock() { return guard(mutex_, value_, after); }

  // Runs as each guard goes, with the lock still held: it may take what it needs
  // from the value, unlock, and then act (the server logs the registry's state
  // changes this way, never under the lock). Set before the value is shared.
  std::function<void(T&, std::unique_lock<std::mutex>&)> after;

 private:
  std::mutex mutex_;
  T value_;
};

class registry {
 public:
  using limits = registry_limits;
  registry(algorithm a, duration host_timeout, bool persistent, limits l, id_generator make_id)
      : algorithm_(a),
        host_timeout_ms_(host_timeout.count()),
        persistent_(persistent),
        limits_(l),
        affinities_(affinity_table::limits{l.affinity_entries, l.affinity_ttl_ms}),
        make_id_(std::move(make_id)) {
    for (tier& t : tiers_) t.picks.set_algorithm(heap_algorithm(a));
  }

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
    r.shown = shown_state(slot, now);
    reason_.clear();
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") registered, weight " + std::to_string(weight) +
                       ": " + r.shown);
    if (id_out) *id_out = r.id;
    changed();
    return {};
  }

  // `why`, when given, ends the log line of the removal.
  std::error_code remove(std::string_view id, std::string_view why = {}) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    by_id_.erase(records_[slot].id);
    record& r = records_[slot];
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") removed" +
                       (why.empty() ? std::string() : ": " + std::string(why)));
    if (r.ramping) ramping_.erase(std::find(ramping_.begin(), ramping_.end(), slot));
    r.ramping = false;
    if (r.resting) resting_.erase(std::find(resting_.begin(), resting_.end(), slot));
    r.resting = false;
    r.listed = false;
    place(slot);
    tiers_[r.backup].picks.reset(slot);
    r.used = false;
    ++r.generation;  // open leases of the old backend no longer count against the slot
    r.id.clear();
    free_slots_.push_back(slot);
    changed();
    return {};
  }

  std::error_code set_weight(std::string_view id, int weight) {
    if (!valid_weight(weight)) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      r.weight = weight;
      tiers_[r.backup].picks.set_weight(slot, effective_weight(r, ramp_checked_));
      place(slot);
    });
  }

  // `why`, when given, is the reason its log line gives.
  std::error_code drain(std::string_view id, bool on, std::int64_t now, std::string_view why = {}) {
    return update(id, now, [&](record& r, std::uint32_t) {
      if (r.draining != on) reason_ = !why.empty() ? std::string(why) : on ? "drained" : "no longer drained";
      r.draining = on;
    });
  }

  // Sets where the backend is reached (host and port); a port of 0 makes it unroutable.
  std::error_code set_address(std::string_view id, const endpoint& at, const resolved_address& resolved,
                              std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = "serves at " + at.to_string();
      r.at = at;
      r.to = resolved;
      r.routable = at.port != 0;
    });
  }

  std::error_code ack(std::string_view id, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      r.last_ack = now;
      reason_ = "acked again";
    });
  }

  // An agent's live connection keeps its backend online; when it drops, the
  // backend gets no new connections until the agent registers again.
  std::error_code set_online(std::string_view id, bool online, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = online ? "its agent is connected again" : "its agent's connection dropped";
      r.online = online;
      r.tied = true;
      if (online) r.last_ack = now;
    });
  }

  // ---- Reported by the backend's agent (`report`); its maxconn goes through
  // set_maxconn (below), like an operator's.
  bool maxconn_of(std::string_view id, int& out) const {
    std::uint32_t slot;
    if (!find(id, slot)) return false;
    out = records_[slot].maxconn;
    return true;
  }
  // The agent's own readiness: drain and down get no new connections (open ones
  // finish), ready is eligible again. Independent of an operator's drain.
  std::error_code set_readiness(std::string_view id, readiness state, std::int64_t now) {
    return update(id, now, [&](record& r, std::uint32_t) {
      reason_ = std::string("its agent reports ") + to_string(state);
      r.reported = state;
    });
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

  // How long a backend has gone without an ack (-1: unknown id), and the limit.
  std::int64_t silent_for(std::string_view id, std::int64_t now) const {
    std::uint32_t slot;
    return find(id, slot) ? now - records_[slot].last_ack : -1;
  }
  std::int64_t host_timeout_ms() const noexcept { return host_timeout_ms_; }

  // Switches the algorithm of every later pick (open connections stay where they are).
  void set_algorithm(algorithm a) {
    algorithm_ = a;
    for (tier& t : tiers_) {
      t.picks.set_algorithm(heap_algorithm(a));
      mark_stale(t);
    }
  }
  algorithm get_algorithm() const noexcept { return algorithm_; }

  // Persistence on or off for later picks; the remembered choices are kept, so that
  // turning it on again finds them (each still expires at its TTL).
  void set_persistent(bool on) noexcept { persistent_ = on; }
  // A new host timeout: every expiring backend is judged again by it at once.
  void set_host_timeout(std::int64_t ms, std::int64_t now) {
    host_timeout_ms_ = ms;
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot)
      if (records_[slot].used && records_[slot].expires) refresh(slot, now);
  }
  // Backends beyond the new limit are refused from now on; none is removed.
  void set_max_backends(std::size_t n) noexcept { limits_.backends = n; }

  // Seeds the random source of `random` (the server does so once, from the OS CSPRNG).
  void seed(std::uint64_t s) noexcept { random_.seed(s); }

  // A backend's connection limit: at `maxconn` open connections (0: no limit) it
  // gets no new ones until one ends.
  std::error_code set_maxconn(std::string_view id, int maxconn) {
    if (maxconn < 0 || maxconn > max_maxconn) return make_error_code(errc::bad_option);
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      r.maxconn = maxconn;
      r.full = at_limit(r);
      place(slot);
    });
  }

  // A backup backend serves only while no primary one can: none is eligible, or
  // every eligible one is at its maxconn.
  std::error_code set_backup(std::string_view id, bool backup) {
    return update(id, -1, [&](record& r, std::uint32_t slot) {
      if (r.backup == backup) return;
      bool listed = r.listed;
      r.listed = false;  // leaves the old tier entirely, then joins the new one
      place(slot);
      tiers_[r.backup].picks.reset(slot);
      r.backup = backup;
      r.listed = listed;
      place(slot);
      for (tier& t : tiers_) mark_stale(t);  // r.hashed speaks of the old tier's table
    });
  }

  // The PROXY protocol header its connections begin with (backend_options::proxy).
  std::error_code set_proxy(std::string_view id, proxy_protocol p) {
    return update(id, -1, [&](record& r, std::uint32_t) { r.proxy = p; });
  }

  // Slow start: a backend that becomes eligible (joins or comes back) ramps its
  // effective weight up over this many milliseconds; 0 turns it off.
  void set_slow_start(std::int64_t ms) { slow_start_ms_ = std::max<std::int64_t>(ms, 0); }

  // Chooses a backend for a client (by its host key) and counts the connection
  // against it. `tried` lists earlier failed attempts of this connection. With
  // persistence, the client's remembered backend comes first while it is eligible
  // and untried; otherwise the selector chooses and the table remembers the choice.
  bool pick(std::int64_t now, std::string_view client_key, const std::vector<lease>& tried, pick_result& out) {
    ramp(now);
    wake(now);
    std::uint32_t chosen = selector::npos;
    auto was_tried = [&](std::uint32_t slot) {
      for (const lease& l : tried)
        if (l.slot == slot && l.generation == records_[slot].generation) return true;
      return false;
    };
    out.full = false;
    out.trial = out.watch = false;
    if (!on_tables_stale_) rebuild_tables();  // nobody rebuilds them elsewhere: before the pick
    bool sticky = persistent_ && !client_key.empty();
    if (sticky) {
      const lease* l = affinities_.find(client_key, now);
      if (l && current(*l) && eligible(l->slot, now) && !records_[l->slot].full && !was_tried(l->slot))
        chosen = l->slot;
    }
    if (chosen == selector::npos) {
      chosen = choose(now, client_key, was_tried);
      if (chosen == selector::npos) {
        out.full = full_ > tried_and_full(tried);  // one it has not tried may make room
        return false;
      }
    }
    record& r = records_[chosen];
    ++r.active;
    ++r.total;
    tiers_[r.backup].picks.set_active(chosen, r.active);
    if (at_limit(r)) {
      r.full = true;
      place(chosen);
    }
    out.chosen = lease{chosen, r.generation};
    out.to = r.to;
    out.proxy = r.proxy;
    out.watch = r.health.watching();
    if (r.health.picked(now, health_)) {
      out.trial = true;
      refresh(chosen, now);  // the one trial: no other connection until it has told
    }
    if (sticky) affinities_.remember(client_key, out.chosen, now);
    return true;
  }

  // ---- Health (>>health). The policy of every backend; passive detection on by default.
  void set_health(const health_policy& p) { health_ = p; }
  const health_policy& health() const noexcept { return health_; }

  // An attempt on `l` failed (refused, timed out, reset before the first byte).
  void attempt_failed(const lease& l, bool trial, std::string_view why, std::int64_t now) {
    if (!current(l)) return;
    record& r = records_[l.slot];
    if (!r.health.failed(now, trial, health_)) return;
    std::int64_t out_for = r.health.retry_at() - now;
    if (trial) {
      reason_ = "its trial connection failed (" + std::string(why) + "); out for " + format_duration(duration(out_for));
    } else {
      int n = std::max(health_.max_fails, 1);
      reason_ = std::to_string(n) + (n == 1 ? " failed attempt" : " failed attempts") + " within " +
                format_duration(duration(health_.fail_timeout_ms)) + " (last: " + std::string(why) + "); out for " +
                format_duration(duration(out_for));
    }
    if (!r.resting) {
      r.resting = true;
      resting_.push_back(l.slot);
    }
    next_wake_ = std::min(next_wake_, r.health.retry_at());
    refresh(l.slot, now);
    reason_.clear();
  }
  // The backend answered an attempt (its first byte), or served it without a failure.
  void attempt_succeeded(const lease& l, bool trial, std::int64_t now) {
    if (!current(l)) return;
    record& r = records_[l.slot];
    if (!r.health.succeeded(trial)) return;
    reason_ = "its trial connection was served";
    refresh(l.slot, now);
    reason_.clear();
  }
  // The attempt ended before it could tell either way.
  void attempt_abandoned(const lease& l, bool trial, std::int64_t now) {
    if (!trial || !current(l)) return;
    records_[l.slot].health.abandoned(true);
    refresh(l.slot, now);  // the trial is free again
  }
  // An active check's result for the backend `id` (>>checker).
  void checked(std::string_view id, bool ok, std::string_view why, std::int64_t now) {
    std::uint32_t slot;
    if (!find(id, slot)) return;
    record& r = records_[slot];
    bool was_out = r.health.passively_out();
    if (r.health.checked(ok, now, health_)) {
      reason_ = ok ? "its health check passed " + std::to_string(health_.rise) + " times in a row"
                   : "its health check failed " + std::to_string(health_.fall) + " times in a row (" +
                         std::string(why) + ")";
    } else if (!(ok && was_out)) {
      return;
    }
    if (ok && was_out) next_wake_ = std::min(next_wake_, now);  // the trial may go now
    refresh(slot, now);
    reason_.clear();
  }
  // What the active checks probe: every backend with an address.
  struct check_target {
    std::string id;
    resolved_address to;
  };
  std::vector<check_target> check_targets() const {
    std::vector<check_target> out;
    for (const record& r : records_)
      if (r.used && r.routable) out.push_back(check_target{r.id, r.to});
    return out;
  }

  // Re-judges at `now` what time alone changes (an ack that is too old, a back-off
  // that is over), so that it is noticed and its state change noted even when no
  // connection comes to pick. The server does this every second.
  void sweep(std::int64_t now) {
    ramp(now);
    wake(now);
    for (std::uint32_t slot = 0; slot < records_.size(); ++slot)
      if (records_[slot].used && records_[slot].expires) refresh(slot, now);  // the rest change by events
  }

  // State changes since last asked, one line of text each: a backend registered,
  // removed, or changing between up, down, expired, draining, offline and no-port.
  bool has_changes() const noexcept { return !changes_.empty(); }
  std::vector<std::string> take_changes() {
    std::vector<std::string> out;
    out.swap(changes_);
    return out;
  }

  // Ends a connection's count against its backend, with the bytes it moved each way
  // (client to backend, backend to client). True when that made room on a backend
  // that was at its maxconn: connections waiting for one may go now.
  bool release(const lease& l, bool failed, std::uint64_t bytes_in = 0, std::uint64_t bytes_out = 0) {
    if (!l.valid() || !current(l)) return false;
    record& r = records_[l.slot];
    if (r.active > 0) --r.active;
    if (failed) ++r.failures;
    r.bytes_in += bytes_in;
    r.bytes_out += bytes_out;
    tiers_[r.backup].picks.set_active(l.slot, r.active);
    if (!r.full || at_limit(r)) return false;
    r.full = false;
    place(l.slot);
    return true;
  }

  // Backends from DNS (>>discovery): the NAME:PORT a backend was resolved from,
  // shown by list(); and a backend's open connections, negative for an unknown id.
  std::error_code set_source(std::string_view id, std::string source) {
    return update(id, -1, [&](record& r, std::uint32_t) { r.source = std::move(source); });
  }
  int active_of(std::string_view id) const {
    std::uint32_t slot;
    return find(id, slot) ? records_[slot].active : -1;
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
      b.maxconn = r.maxconn;
      b.backup = r.backup;
      b.active = r.active;
      b.total = r.total;
      b.failures = r.failures;
      b.eligible = eligible(slot, now) && !r.full;
      b.draining = r.draining;
      b.state = state_of(slot, now);
      b.source = r.source;
      b.proxy = r.proxy;
      b.bytes_in = r.bytes_in;
      b.bytes_out = r.bytes_out;
      out.push_back(std::move(b));
    }
    return out;
  }

  std::size_t size() const noexcept { return by_id_.size(); }
  std::size_t affinity_size() const noexcept { return affinities_.size(); }

  // ---- Kept across restarts (--state-file). Called, under the registry's lock, after
  // every change worth keeping (a backend added or removed, an ack, a new weight...),
  // never for a pick or a release: it must only note the change and return.
  void on_change(std::function<void()> f) { on_change_ = std::move(f); }
  // The backends that registered over the admin port (static and DNS backends come
  // from the configuration), with the wall-clock time `unix_now` that is `now`.
  std::vector<kept_backend> keep(std::int64_t now, std::int64_t unix_now) const {
    std::vector<kept_backend> out;
    for (const record& r : records_) {
      if (!r.used || !r.expires) continue;
      kept_backend k;
      state_record& s = k.record;
      s.id = r.id;
      s.kind = r.tied ? kept_kind::native : kept_kind::legacy;
      s.host = r.at.host;
      s.port = r.routable ? r.at.port : 0;
      s.weight = r.weight;
      s.maxconn = r.maxconn;
      s.backup = r.backup;
      s.proxy = r.proxy;
      s.drained = r.draining;
      s.reported = r.reported;
      s.ack_unix_ms = std::max<std::int64_t>(0, unix_now - (now - r.last_ack));
      s.source = r.source;
      if (r.routable) k.to = r.to;
      out.push_back(std::move(k));
    }
    return out;
  }
  // Adds a kept backend again under its id, as it was: its last ack as old as it was
  // then, and a native agent's backend offline until its agent registers again. `to`
  // is where it is reached (null: no service port). errc::bad_option when the id is
  // taken or the record does not fit the registry's ranges.
  std::error_code restore(const state_record& k, const resolved_address* to, std::int64_t now,
                          std::int64_t unix_now) {
    if (!is_backend_id(k.id) || known(k.id) || k.maxconn < 0 || k.maxconn > max_maxconn)
      return make_error_code(errc::bad_option);
    std::string id;
    endpoint at{k.host, k.port};
    if (auto e = add(at, k.port != 0 ? to : nullptr, k.weight, true, &id, now, k.id)) return e;
    set_backup(id, k.backup);
    set_source(id, k.source);
    std::int64_t age = std::max<std::int64_t>(0, unix_now - k.ack_unix_ms);
    return update(id, now, [&](record& r, std::uint32_t) {
      r.maxconn = k.maxconn;
      r.proxy = k.proxy;
      r.full = false;
      r.draining = k.drained;
      r.reported = k.reported;
      r.last_ack = now - age;
      r.tied = k.kind == kept_kind::native;
      r.online = !r.tied;
    });
  }

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
    int maxconn = 0;      // 0: no limit
    bool backup = false;  // in the backup tier
    bool full = false;    // at its maxconn
    proxy_protocol proxy = proxy_protocol::none;
    // Where place() last put it: eligible when last judged, and in the hash table
    // (with which weight), so that the table is rebuilt only when these change.
    bool listed = false;
    bool hashed = false;
    int hashed_weight = 0;
    bool counted_full = false;  // counted in full_
    int active = 0;
    std::uint64_t total = 0;
    std::uint64_t failures = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0;
    std::int64_t last_ack = 0;
    std::int64_t eligible_since = 0;  // when it last became eligible (slow start)
    bool ramping = false;             // in ramping_: its effective weight still grows
    std::uint32_t generation = 0;
    std::string source;  // backends from DNS: the NAME:PORT it came from
    readiness reported = readiness::ready;  // reported by the agent
    backend_health health;
    bool resting = false;        // in resting_: passively out, its trial to be woken
    const char* shown = nullptr;  // the state last noted (shown_state)
    bool tied = false;  // kept online by its agent's connection (native dialect)
  };

  // Changes one backend, then re-judges its eligibility at `now` (a negative
  // `now` leaves eligibility alone).
  template <class Change>
  std::error_code update(std::string_view id, std::int64_t now, Change&& change) {
    std::uint32_t slot;
    if (!find(id, slot)) return make_error_code(errc::unknown_backend);
    change(records_[slot], slot);
    if (now >= 0) refresh(slot, now);
    changed();
    return {};
  }
  void changed() {
    if (on_change_) on_change_();
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
           (!r.expires || now - r.last_ack <= host_timeout_ms_) && r.health.usable(now);
  }
  const char* state_of(std::uint32_t slot, std::int64_t now) const noexcept {
    const record& r = records_[slot];
    if (!r.routable) return "no-port";
    if (!r.online) return "offline";
    if (r.expires && now - r.last_ack > host_timeout_ms_) return "expired";
    if (r.reported == readiness::down || r.health.down()) return "down";
    if (r.draining || r.reported == readiness::drain) return "draining";
    if (r.full) return "full";
    return "up";
  }
  // The state its changes are logged by: a full backend is up (fullness is load).
  const char* shown_state(std::uint32_t slot, std::int64_t now) const noexcept {
    const char* s = state_of(slot, now);
    return std::strcmp(s, "full") == 0 ? "up" : s;
  }
  // Notes a change of the shown state, with reason_ (what the last change was) or
  // what the state itself says.
  void note(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    const char* s = shown_state(slot, now);
    if (!r.shown || std::strcmp(s, r.shown) == 0) {
      if (!r.shown) r.shown = s;
      return;
    }
    std::string why = reason_;
    if (std::strcmp(s, "expired") == 0)
      why = "no ack within the host timeout (" + format_duration(duration(host_timeout_ms_)) + ")";
    else if (why.empty())
      why = std::string("was ") + r.shown;
    changes_.push_back("backend " + r.id + " (" + r.at.to_string() + ") " + s + ": " + why);
    r.shown = s;
  }
  // Lets the trials whose back-off is over be picked.
  void wake(std::int64_t now) {
    if (resting_.empty() || now < next_wake_) return;
    next_wake_ = std::numeric_limits<std::int64_t>::max();
    for (std::size_t i = 0; i < resting_.size();) {
      std::uint32_t slot = resting_[i];
      record& r = records_[slot];
      if (!r.used || !r.health.passively_out()) {
        r.resting = false;
        resting_[i] = resting_.back();
        resting_.pop_back();
        continue;
      }
      if (r.health.usable(now) && !r.listed) refresh(slot, now);
      // Its back-off, or (trial going on) a look now and then, in case it stalls.
      next_wake_ = std::min(next_wake_, r.health.retry_at() > now ? r.health.retry_at() : now + 1000);
      ++i;
    }
  }
  void refresh(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    bool was_listed = r.listed;
    r.listed = eligible(slot, now);
    if (r.listed && !was_listed) {  // joins or comes back: its slow start begins
      r.eligible_since = now;
      if (slow_start_ms_ > 0 && !r.ramping) {
        r.ramping = true;
        ramping_.push_back(slot);
      }
    }
    place(slot, now);
    note(slot, now);
  }

  // Slow start, a pure function of now: 1/16 of the weight when the backend becomes
  // eligible, then up by sixteenths (few re-weights, each keeps its pass) to the
  // whole weight after slow_start_ms_. It shapes leastconn, roundrobin and random;
  // hash keeps its table (a consistent mapping does not ramp).
  static constexpr std::int64_t ramp_levels = 16;
  static constexpr std::int64_t ramp_step_ms = 5;  // how often pick() re-weights ramping backends
  int effective_weight(const record& r, std::int64_t now) const noexcept {
    std::int64_t elapsed = now - r.eligible_since;
    if (!r.ramping || slow_start_ms_ <= 0 || elapsed >= slow_start_ms_) return r.weight;
    std::int64_t level = 1 + std::max<std::int64_t>(elapsed, 0) * (ramp_levels - 1) / slow_start_ms_;
    return static_cast<int>(std::max<std::int64_t>(min_weight, r.weight * level / ramp_levels));
  }
  // Re-weights the ramping backends, at most every ramp_step_ms, so a pick stays
  // O(log n) but for the few backends in their slow start.
  void ramp(std::int64_t now) {
    if (ramping_.empty() || (now >= ramp_checked_ && now - ramp_checked_ < ramp_step_ms)) return;
    ramp_checked_ = now;
    for (std::size_t i = 0; i < ramping_.size();) {
      std::uint32_t slot = ramping_[i];
      record& r = records_[slot];
      bool done = now - r.eligible_since >= slow_start_ms_;
      if (done) r.ramping = false;
      place(slot, now);
      if (!done) {
        ++i;
        continue;
      }
      ramping_[i] = ramping_.back();
      ramping_.pop_back();
    }
  }

  // ---- The algorithms. Each tier (primaries, backups) keeps every structure a pick
  // may use, for the backends in it that can take a connection now (eligible when
  // last judged and below their maxconn): the heap of leastconn and roundrobin, the
  // weights of random; and, with hash, the Maglev table of its eligible backends
  // (full ones stay in it: a pick passes over them without a rebuild).
  struct tier {
    selector picks;
    weighted_sampler weights;
    maglev_table table;
    bool table_dirty = false;
    std::uint64_t table_generation = 0;  // of the last job taken
  };
  static algorithm heap_algorithm(algorithm a) noexcept {
    return a == algorithm::roundrobin ? algorithm::roundrobin : algorithm::leastconn;
  }
  std::size_t tried_and_full(const std::vector<lease>& tried) const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < tried.size(); ++i) {
      const lease& l = tried[i];
      bool again = false;  // a lease may be listed twice
      for (std::size_t j = 0; j < i; ++j) again = again || tried[j].slot == l.slot;
      if (!again && current(l) && records_[l.slot].counted_full) ++n;
    }
    return n;
  }
  static bool at_limit(const record& r) noexcept { return r.maxconn > 0 && r.active >= r.maxconn; }

  // Puts a slot where its flags (listed, full, backup) say, in every structure
  // of its tier, and keeps the count of listed backends at their limit.
  // `now` times the slow start; without one, the last time ramp() looked.
  void place(std::uint32_t slot) { place(slot, ramp_checked_); }
  void place(std::uint32_t slot, std::int64_t now) {
    record& r = records_[slot];
    tier& t = tiers_[r.backup];
    bool counted = r.listed && r.full;
    if (counted != r.counted_full) {
      r.counted_full = counted;
      if (counted) ++full_;
      else --full_;
    }
    if (r.listed && !r.full) {
      int weight = effective_weight(r, now);
      t.picks.insert(slot, weight, r.active);
      t.weights.set(slot, static_cast<std::uint64_t>(weight));
    } else {
      t.picks.erase(slot);
      t.weights.set(slot, 0);
    }
    if (r.hashed != r.listed || (r.listed && r.hashed_weight != r.weight)) mark_stale(t);
  }

  void mark_stale(tier& t) {
    t.table_dirty = true;
    if (algorithm_ != algorithm::hash || tables_wanted_ || !on_tables_stale_) return;
    tables_wanted_ = true;
    on_tables_stale_();
  }

  // With hash, the Maglev tables are rebuilt whenever their membership or weights
  // changed, once however many changes came in between.
  void rebuild_tables() {
    for (table_job& job : take_table_jobs()) install_table(job.which, job.generation, job.build());
  }

 public:
  // ---- Maglev rebuilds off the per-connection path. A build is O(M log n), about
  // 2 ms for M = 65537, too long for a pick under the registry lock. With a
  // callback set, a change that makes a table stale calls it once (under the lock:
  // it may only post a task); the task takes the jobs under the lock, builds them
  // without it and installs them under it again. Until then picks use the table
  // before the change, passing over the backends that can no longer serve.
  struct table_job {
    int which = 0;  // the tier: 0 primaries, 1 backups
    std::uint64_t generation = 0;
    std::vector<maglev_table::member> members;
    maglev_table build() {
      maglev_table table;
      table.build(std::move(members));
      return table;
    }
  };
  void on_tables_stale(std::function<void()> notify) { on_tables_stale_ = std::move(notify); }
  std::vector<table_job> take_table_jobs() {
    std::vector<table_job> jobs;
    tables_wanted_ = false;
    if (algorithm_ != algorithm::hash) return jobs;
    for (int which = 0; which < 2; ++which) {
      tier& t = tiers_[which];
      if (!t.table_dirty) continue;
      t.table_dirty = false;
      table_job job;
      job.which = which;
      job.generation = ++t.table_generation;
      for (std::uint32_t slot = 0; slot < records_.size(); ++slot) {
        record& r = records_[slot];
        if (r.backup != (which == 1)) continue;
        r.hashed = r.used && r.listed;
        r.hashed_weight = r.weight;
        if (r.hashed)
          job.members.push_back(maglev_table::member{backend_key(r.to), slot, static_cast<std::uint64_t>(r.weight)});
      }
      jobs.push_back(std::move(job));
    }
    return jobs;
  }
  // Installs a built table unless a later job for its tier was taken meanwhile.
  void install_table(int which, std::uint64_t generation, maglev_table table) {
    tier& t = tiers_[which];
    if (generation == t.table_generation) t.table = std::move(table);
  }

 private:
  // A backend for a new connection: from the primaries, else from the backups.
  template <class Tried>
  std::uint32_t choose(std::int64_t now, std::string_view client_key, Tried&& was_tried) {
    std::uint32_t chosen = choose_in(tiers_[0], now, client_key, was_tried);
    if (chosen == selector::npos) chosen = choose_in(tiers_[1], now, client_key, was_tried);
    return chosen;
  }

  template <class Tried>
  std::uint32_t choose_in(tier& t, std::int64_t now, std::string_view client_key, Tried&& was_tried) {
    std::vector<std::uint32_t> expired;  // found ineligible since last judged: placed once the pick is done
    auto judge = [&](std::uint32_t slot) {
      if (!eligible(slot, now)) {
        expired.push_back(slot);
        return selector::verdict::evict;
      }
      return was_tried(slot) ? selector::verdict::skip : selector::verdict::take;
    };
    std::uint32_t chosen = selector::npos;
    if (algorithm_ == algorithm::random) {
      chosen = pick_two(t.weights, random_, judge, [&](std::uint32_t a, std::uint32_t b) {
        const record& x = records_[a];
        const record& y = records_[b];
        return static_cast<std::uint64_t>(x.active) * static_cast<std::uint64_t>(y.weight) <
               static_cast<std::uint64_t>(y.active) * static_cast<std::uint64_t>(x.weight);
      });
    } else if (algorithm_ == algorithm::hash && !client_key.empty()) {
      chosen = choose_hashed(t, client_key, judge);
      if (chosen == selector::npos) chosen = t.picks.pick(judge);  // every preference tried: the least loaded
    } else {
      chosen = t.picks.pick(judge);
    }
    for (std::uint32_t slot : expired) refresh(slot, now);
    return chosen;
  }

  // The client's first preference in the table that can serve, trying at most
  // maglev_table::max_attempts lookups; npos when none could.
  template <class Judge>
  std::uint32_t choose_hashed(tier& t, std::string_view client_key, Judge& judge) {
    for (unsigned attempt = 0; attempt < maglev_table::max_attempts; ++attempt) {
      std::uint32_t slot = t.table.lookup(client_key, attempt);
      if (slot == maglev_table::npos) return slot;
      if (slot >= records_.size() || records_[slot].full || !records_[slot].listed) continue;  // a stale table's
      if (judge(slot) == selector::verdict::take) return slot;
    }
    return selector::npos;
  }

  algorithm algorithm_;
  tier tiers_[2];  // primaries, backups
  std::function<void()> on_tables_stale_;
  bool tables_wanted_ = false;  // on_tables_stale_ was called and its jobs are not taken yet
  std::size_t full_ = 0;  // listed backends at their maxconn
  fast_random random_;
  std::int64_t host_timeout_ms_;
  bool persistent_;
  limits limits_;
  affinity_table affinities_;
  id_generator make_id_;
  std::vector<record> records_;
  std::vector<std::uint32_t> free_slots_;
  std::int64_t slow_start_ms_ = 0;
  std::int64_t ramp_checked_ = 0;          // the last now ramp() re-weighted at
  std::vector<std::uint32_t> ramping_;     // slots in their slow start
  health_policy health_;
  std::vector<std::uint32_t> resting_;     // slots passively out (>>health)
  std::int64_t next_wake_ = std::numeric_limits<std::int64_t>::max();  // when wake() next has work
  std::string reason_;                     // why the change being made happens, for note()
  std::vector<std::string> changes_;       // noted state changes, for take_changes()
  std::unordered_map<std::string, std::uint32_t> by_id_;
  std::function<void()> on_change_;
};

}  // namespace detail
}  // namespace harmony
