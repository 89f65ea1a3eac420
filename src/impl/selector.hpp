namespace harmony {
namespace detail {

// >>selector  sans-IO backend selection (weighted least-connections, round-robin)
// Sans-IO choice of a backend among eligible slots, O(log n) per operation.
// Every slot carries a virtual "pass" that advances by 1/weight each time it is
// picked (stride scheduling): picking the smallest pass spreads picks smoothly in
// proportion to weight, as smooth weighted round-robin does, but from a heap.
// A pass is kept exactly, as ticks/weight, so equal passes tie exactly.
//
// roundrobin takes the smallest pass. leastconn takes it too, unless that backend
// holds at least one whole connection more than its weighted fair share of the
// open connections plus the one being placed, i.e. active - 1 >= (A + 1) * w / W
// (A open in all, W the total weight): then it takes the backend with the fewest
// open connections per unit of weight, which is never over its share. So a
// connection still tearing down never costs a backend its turn (weights hold for
// short sequential traffic), while a slow backend that piles up connections is
// passed over. Two indexed heaps, one by pass and one by load, keep it O(log n).
//
// Short-term fairness: a backend passed over (for load or by the judge) lags the
// virtual time "now" (the largest pass taken so far); when it is next taken its pass
// is first raised to within one stride of now, so it gets one pick, not a run of
// catch-up picks, and nobody else is starved meanwhile. A newcomer starts at now.
class selector {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;
  enum class verdict { take, skip, evict };

  explicit selector(algorithm a = algorithm::leastconn) : algorithm_(a) {}

  void set_algorithm(algorithm a) {
    algorithm_ = a;
    // The load heap is kept only for leastconn.
    heaps_[by_load].clear();
    if (uses_load())
      for (std::uint32_t slot : heaps_[by_pass]) push(by_load, slot);
  }
  algorithm get_algorithm() const noexcept { return algorithm_; }
  std::size_t size() const noexcept { return heaps_[by_pass].size(); }
  bool contains(std::uint32_t slot) const noexcept {
    return slot < items_.size() && items_[slot].pos[by_pass] != npos;
  }

  // Makes a slot eligible. A newcomer starts at the current virtual time, so it
  // neither floods with catch-up picks nor waits behind everyone.
  void insert(std::uint32_t slot, int weight, int active) {
    if (contains(slot)) {
      set_weight(slot, weight);
      set_active(slot, active);
      return;
    }
    if (slot >= items_.size()) items_.resize(slot + 1);
    item& it = items_[slot];
    set_weight_only(it, weight);
    it.active = std::max(active, 0);
    it.ticks = std::max(it.ticks, ticks_at_now(it.weight));
    total_weight_ += it.weight;
    total_active_ += static_cast<std::uint64_t>(it.active);
    link(slot);
  }
  void erase(std::uint32_t slot) {
    if (!contains(slot)) return;
    unlink(slot);
    total_weight_ -= items_[slot].weight;
    total_active_ -= static_cast<std::uint64_t>(items_[slot].active);
  }
  // Forgets a slot entirely (it may be reused by another backend).
  void reset(std::uint32_t slot) {
    erase(slot);
    if (slot < items_.size()) items_[slot] = item{};
  }
  void set_weight(std::uint32_t slot, int weight) {
    if (slot >= items_.size()) return;
    item& it = items_[slot];
    bool in = contains(slot);
    if (in) total_weight_ -= it.weight;
    set_weight_only(it, weight);
    if (!in) return;
    total_weight_ += it.weight;
    fix_all(slot);
  }
  void set_active(std::uint32_t slot, int active) {
    if (slot >= items_.size()) return;
    item& it = items_[slot];
    active = std::max(active, 0);
    if (!contains(slot)) {
      it.active = active;
      return;
    }
    total_active_ = total_active_ - static_cast<std::uint64_t>(it.active) + static_cast<std::uint64_t>(active);
    it.active = active;
    if (uses_load()) fix(by_load, it.pos[by_load]);
  }

  // Returns the best slot that `judge` takes, or npos. Slots judged `skip` stay
  // eligible; `evict` removes them. The chosen slot is charged one pick. `judge`
  // may be asked twice about a slot in one pick and must answer the same.
  template <class Judge>
  std::uint32_t pick(Judge&& judge) {
    std::uint32_t aside_small[8];
    std::vector<std::uint32_t> aside_big;
    std::size_t aside = 0;
    auto first_taken = [&](int h) {
      while (!heaps_[h].empty()) {
        std::uint32_t top = heaps_[h].front();
        verdict v = judge(top);
        if (v == verdict::take) return top;
        if (v == verdict::evict) {
          erase(top);
          continue;
        }
        unlink(top);  // aside for this pick only; it still counts in the totals
        if (aside < 8) aside_small[aside++] = top;
        else aside_big.push_back(top);
      }
      return npos;
    };
    std::uint32_t chosen = first_taken(by_pass);
    // The least loaded slot is never over its share, and the chosen one is in
    // the load heap too, so this finds a slot.
    if (chosen != npos && uses_load() && over_share(items_[chosen])) chosen = first_taken(by_load);
    for (std::size_t i = 0; i < aside; ++i) link(aside_small[i]);
    for (std::uint32_t s : aside_big) link(s);
    if (chosen != npos) charge(chosen);
    return chosen;
  }

  // The pass of a slot relative to now, in strides of that slot (pass - now) * weight,
  // rounded down: -1 or more for every slot by the time it is taken. For tests.
  std::int64_t lead(std::uint32_t slot) const noexcept {
    if (slot >= items_.size()) return 0;
    const item& it = items_[slot];
    return static_cast<std::int64_t>(it.ticks) - static_cast<std::int64_t>(ticks_at_now(it.weight));
  }

 private:
  enum : int { by_pass = 0, by_load = 1 };
  struct item {
    std::uint64_t weight = 1;
    std::uint64_t ticks = 0;  // pass = ticks / weight
    int active = 0;
    std::uint32_t pos[2] = {npos, npos};  // in heaps_[by_pass], heaps_[by_load]
  };

  bool uses_load() const noexcept { return algorithm_ == algorithm::leastconn; }

  // The registry admits only weights in [min_weight, max_weight] (>>types); the
  // clamp merely keeps every product below within 63 bits should one slip through.
  static void set_weight_only(item& it, int weight) {
    std::uint64_t w = static_cast<std::uint64_t>(std::min(std::max(weight, min_weight), max_weight));
    if (w == it.weight) return;
    it.ticks = it.ticks * w / it.weight;  // keep the pass where it was
    it.weight = w;
  }
  // The smallest ticks at weight w whose pass is not before now.
  std::uint64_t ticks_at_now(std::uint64_t w) const noexcept {
    return (now_ticks_ * w + now_weight_ - 1) / now_weight_;
  }
  // At least one whole connection over its weighted share of the open connections
  // plus the one being placed: active - 1 >= (A + 1) * w / W. Counts are capped at
  // 2^24 (far above any descriptor limit) to keep the products within 64 bits.
  bool over_share(const item& it) const noexcept {
    constexpr std::uint64_t cap = std::uint64_t{1} << 24;
    std::uint64_t mine = std::min<std::uint64_t>(static_cast<std::uint64_t>(it.active), cap);
    if (mine == 0) return false;
    std::uint64_t all = std::min(total_active_, cap);
    return (mine - 1) * total_weight_ >= (all + 1) * it.weight;
  }
  void charge(std::uint32_t slot) {
    item& it = items_[slot];
    // A slot that fell behind (passed over for load, or by the judge) comes back
    // within one stride of now instead of taking a run of catch-up picks.
    std::uint64_t at_now = ticks_at_now(it.weight);
    if (it.ticks + 1 < at_now) it.ticks = at_now - 1;
    if (it.ticks * now_weight_ > now_ticks_ * it.weight) {
      now_ticks_ = it.ticks;
      now_weight_ = it.weight;
    }
    ++it.ticks;
    fix_all(slot);
  }

  void link(std::uint32_t slot) {
    push(by_pass, slot);
    if (uses_load()) push(by_load, slot);
  }
  void unlink(std::uint32_t slot) {
    remove(by_pass, slot);
    if (uses_load()) remove(by_load, slot);
  }
  void fix_all(std::uint32_t slot) {
    fix(by_pass, items_[slot].pos[by_pass]);
    if (uses_load()) fix(by_load, items_[slot].pos[by_load]);
  }

  // Whether slot a goes before slot b in heap h.
  bool before(int h, std::uint32_t a, std::uint32_t b) const noexcept {
    const item& x = items_[a];
    const item& y = items_[b];
    if (h == by_load) {
      std::uint64_t lx = static_cast<std::uint64_t>(x.active) * y.weight;
      std::uint64_t ly = static_cast<std::uint64_t>(y.active) * x.weight;
      if (lx != ly) return lx < ly;
    }
    std::uint64_t px = x.ticks * y.weight, py = y.ticks * x.weight;
    if (px != py) return px < py;
    // Equal passes: the heavier goes first, as in smooth weighted round-robin.
    if (x.weight != y.weight) return x.weight > y.weight;
    return a < b;
  }
  void push(int h, std::uint32_t slot) {
    items_[slot].pos[h] = static_cast<std::uint32_t>(heaps_[h].size());
    heaps_[h].push_back(slot);
    sift_up(h, items_[slot].pos[h]);
  }
  void remove(int h, std::uint32_t slot) {
    std::vector<std::uint32_t>& heap = heaps_[h];
    std::uint32_t pos = items_[slot].pos[h];
    items_[slot].pos[h] = npos;
    std::uint32_t last = heap.back();
    heap.pop_back();
    if (pos < heap.size()) {
      place(h, pos, last);
      fix(h, pos);
    }
  }
  void fix(int h, std::uint32_t pos) {
    std::uint32_t slot = heaps_[h][pos];
    sift_up(h, pos);
    sift_down(h, items_[slot].pos[h]);
  }
  void place(int h, std::size_t pos, std::uint32_t slot) {
    heaps_[h][pos] = slot;
    items_[slot].pos[h] = static_cast<std::uint32_t>(pos);
  }
  void sift_up(int h, std::size_t pos) {
    std::uint32_t slot = heaps_[h][pos];
    while (pos > 0) {
      std::size_t parent = (pos - 1) / 2;
      if (!before(h, slot, heaps_[h][parent])) break;
      place(h, pos, heaps_[h][parent]);
      pos = parent;
    }
    place(h, pos, slot);
  }
  void sift_down(int h, std::size_t pos) {
    const std::vector<std::uint32_t>& heap = heaps_[h];
    std::uint32_t slot = heap[pos];
    for (;;) {
      std::size_t child = 2 * pos + 1;
      if (child >= heap.size()) break;
      if (child + 1 < heap.size() && before(h, heap[child + 1], heap[child])) ++child;
      if (!before(h, heap[child], slot)) break;
      place(h, pos, heap[child]);
      pos = child;
    }
    place(h, pos, slot);
  }

  algorithm algorithm_;
  std::vector<item> items_;
  std::vector<std::uint32_t> heaps_[2];
  std::uint64_t total_weight_ = 0;  // of the slots in the heaps
  std::uint64_t total_active_ = 0;
  std::uint64_t now_ticks_ = 0;  // the virtual time: the largest pass taken so far
  std::uint64_t now_weight_ = 1;
};

}  // namespace detail
}  // namespace harmony
