namespace harmony {
namespace detail {

// >>maglev  sans-IO consistent hashing: a Maglev lookup table keyed by backend address
// `hash` maps a client address to a backend through a Maglev lookup table
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016). Every backend has its own permutation of the M
// entries (M prime), derived from its key alone: entry j is
// (offset + j * skip) mod M. Backends take turns, each claiming the next entry
// of its permutation that is still free, until the table is full; a backend of
// twice the weight takes twice the turns (stride order: the smallest
// (turns + 1) / weight goes next). Since the keys are the backends' addresses
// and the turn order is decided by sorted keys, every balancer with the same
// backend set builds the same table, whatever order the backends came in; and
// since each permutation is the backend's own, removing one backend moves its
// entries only, and few others. A pick is a hash and a lookup; the table is
// rebuilt only when the backend set or a weight changes.

// 64-bit FNV-1a: the same on every platform and compiler (std::hash is not).
inline std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t h = 14695981039346656037ULL) noexcept {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// The splitmix64 finaliser: spreads FNV's weak low bits over all 64.
inline std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A backend's key: family, address bytes and port of where it is reached, the
// same bytes on every balancer that resolves the same address.
inline std::string backend_key(const resolved_address& to) {
  std::string key;
  key.reserve(19);
  key.push_back(static_cast<char>(to.family));
  key.append(reinterpret_cast<const char*>(to.bytes), to.host_size());
  key.push_back(static_cast<char>(to.port >> 8));
  key.push_back(static_cast<char>(to.port & 0xff));
  return key;
}

class maglev_table {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;
  // How many lookups a pick may make (seeds 0, 1, …) before it gives up on the table.
  static constexpr unsigned max_attempts = 8;

  struct member {
    std::string key;           // backend_key(), or any bytes naming the backend the same everywhere
    std::uint32_t slot = 0;    // what lookup() returns for it
    std::uint64_t weight = 1;  // at least 1
  };

  // `size` must be prime (hash_table_size by default) for every skip to reach every entry.
  explicit maglev_table(std::uint32_t size = hash_table_size) : size_(size < 2 ? 2 : size) {}

  std::uint32_t size() const noexcept { return size_; }
  bool empty() const noexcept { return members_.empty(); }
  // The members in canonical (key) order, and the table as indices into them.
  const std::vector<member>& members() const noexcept { return members_; }
  const std::vector<std::uint32_t>& entries() const noexcept { return entries_; }

  // Where backend `key`'s permutation starts and how it steps: offset in [0, M), skip in [1, M).
  std::uint32_t offset(std::string_view key) const noexcept {
    return static_cast<std::uint32_t>(mix64(fnv1a64(key) ^ 0x6F6666736574ULL) % size_);
  }
  std::uint32_t skip(std::string_view key) const noexcept {
    return static_cast<std::uint32_t>(mix64(fnv1a64(key) ^ 0x736B6970ULL) % (size_ - 1) + 1);
  }

  // Builds the table for these members; their order does not matter. O(M log n).
  void build(std::vector<member> members) {
    members_ = std::move(members);
    std::sort(members_.begin(), members_.end(), [](const member& a, const member& b) {
      return a.key != b.key ? a.key < b.key : a.slot < b.slot;
    });
    entries_.clear();
    if (members_.empty()) return;
    entries_.assign(size_, npos);
    struct turn {
      std::uint64_t taken = 0;  // entries claimed so far
      std::uint64_t weight = 1;
      std::uint32_t at = 0;     // the next place in its permutation
      std::uint32_t skip = 1;
    };
    std::vector<turn> turns(members_.size());
    for (std::size_t i = 0; i < members_.size(); ++i) {
      turns[i].weight = std::max<std::uint64_t>(1, members_[i].weight);
      turns[i].at = offset(members_[i].key);
      turns[i].skip = skip(members_[i].key);
    }
    // A heap of member indices, the next to take a turn on top: smallest
    // (taken + 1) / weight, compared exactly; ties go to the lower index.
    auto later = [&](std::uint32_t a, std::uint32_t b) {
      std::uint64_t x = (turns[a].taken + 1) * turns[b].weight, y = (turns[b].taken + 1) * turns[a].weight;
      return x != y ? x > y : a > b;
    };
    std::vector<std::uint32_t> heap(members_.size());
    for (std::uint32_t i = 0; i < heap.size(); ++i) heap[i] = i;
    std::make_heap(heap.begin(), heap.end(), later);
    for (std::uint32_t filled = 0; filled < size_; ++filled) {
      std::pop_heap(heap.begin(), heap.end(), later);
      std::uint32_t i = heap.back();
      turn& t = turns[i];
      while (entries_[t.at] != npos) {
        t.at += t.skip;  // both below M, so one subtraction is the modulo
        if (t.at >= size_) t.at -= size_;
      }
      entries_[t.at] = i;
      ++t.taken;
      std::push_heap(heap.begin(), heap.end(), later);
    }
  }

  // The backend (slot) for a client key at `attempt` 0, 1, …: each attempt is an
  // independent lookup, the client's next preference when the first cannot serve.
  std::uint32_t lookup(std::string_view client_key, unsigned attempt = 0) const noexcept {
    if (entries_.empty()) return npos;
    std::uint64_t h = mix64(fnv1a64(client_key) + 0x9E3779B97F4A7C15ULL * attempt);
    return members_[entries_[h % size_]].slot;
  }

 private:
  std::uint32_t size_;
  std::vector<member> members_;
  std::vector<std::uint32_t> entries_;
};

}  // namespace detail
}  // namespace harmony
