namespace harmony {
namespace detail {

// >>affinity  sans-IO persistence table: client key -> backend lease, bounded, idle TTL
// Which backend a client (by its host key) went to last, for persistence. The
// table is bounded twice: an entry unused for longer than the TTL is expired (not
// found, and dropped by prune), and when the table is full a prune makes room,
// dropping the oldest half if nothing has expired. Times are caller milliseconds.
struct lease {
  std::uint32_t slot = selector::npos;
  std::uint32_t generation = 0;
  bool valid() const noexcept { return slot != selector::npos; }
  bool operator==(const lease& o) const noexcept { return slot == o.slot && generation == o.generation; }
};

class affinity_table {
 public:
  struct limits {
    std::size_t entries = 100000;
    std::int64_t ttl_ms = 3600000;
  };

  affinity_table() = default;
  explicit affinity_table(limits l) : limits_(l) {}

  // The backend remembered for `key`, or nullptr when there is none or it expired.
  const lease* find(std::string_view key, std::int64_t now) const {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end() || expired(it->second, now)) return nullptr;
    return &it->second.backend;
  }

  // Remembers (or refreshes) the backend of `key` as used at `now`.
  void remember(std::string_view key, lease backend, std::int64_t now) {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) {
      if (entries_.size() >= limits_.entries) prune(now);
      it = entries_.emplace(std::string(key), entry{}).first;
    }
    it->second.backend = backend;
    it->second.last_used = now;
  }

  bool forget(std::string_view key) { return entries_.erase(std::string(key)) > 0; }

  // Drops the expired entries; if the table is still full, the oldest half goes
  // too. Returns how many entries were dropped.
  std::size_t prune(std::int64_t now) {
    std::size_t before = entries_.size();
    for (auto it = entries_.begin(); it != entries_.end();)
      it = expired(it->second, now) ? entries_.erase(it) : std::next(it);
    if (entries_.size() >= limits_.entries && !entries_.empty()) {
      std::vector<std::int64_t> ages;
      ages.reserve(entries_.size());
      for (auto& e : entries_) ages.push_back(e.second.last_used);
      auto middle = ages.begin() + static_cast<std::ptrdiff_t>(ages.size() / 2);
      std::nth_element(ages.begin(), middle, ages.end());
      std::int64_t cut = *middle;
      for (auto it = entries_.begin(); it != entries_.end();)
        it = it->second.last_used <= cut ? entries_.erase(it) : std::next(it);
    }
    return before - entries_.size();
  }

  std::size_t size() const noexcept { return entries_.size(); }
  const limits& bounds() const noexcept { return limits_; }

 private:
  struct entry {
    lease backend;
    std::int64_t last_used = 0;
  };
  bool expired(const entry& e, std::int64_t now) const noexcept { return now - e.last_used > limits_.ttl_ms; }

  limits limits_;
  std::unordered_map<std::string, entry> entries_;
};

}  // namespace detail
}  // namespace harmony
