namespace harmony {
namespace detail {

// >>selector  sans-IO backend selection (weighted least-connections, round-robin)
// Sans-IO choice of a backend among eligible slots, O(log n) per operation.
// Every slot carries a virtual "pass" that advances by 1/weight each time it is
// picked (stride scheduling): picking the smallest pass spreads picks smoothly in
// proportion to weight, as smooth weighted round-robin does, but from a heap.
// A pass is kept exactly, as ticks/weight, so equal passes tie exactly.
// leastconn orders first by active/weight, so concurrent load goes to the least
// loaded backend and equally loaded ones (e.g. all idle) split by weight.
class selector {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;
  enum class verdict { take, skip, evict };

  explicit selector(algorithm a = algorithm::leastconn) : algorithm_(a) {}

  void set_algorithm(algorithm a) {
    algorithm_ = a;
    for (std::size_t i = heap_.size() / 2 + 1; i-- > 0;)
      if (i < heap_.size()) sift_down(i);
  }
  algorithm get_algorithm() const noexcept { return algorithm_; }
  std::size_t size() const noexcept { return heap_.size(); }
  bool contains(std::uint32_t slot) const noexcept { return slot < items_.size() && items_[slot].pos != npos; }

  // Makes a slot eligible. A newcomer starts at the current virtual time, so it
  // neither floods with catch-up picks nor waits behind everyone.
  void insert(std::uint32_t slot, int weight, int active) {
    if (slot >= items_.size()) items_.resize(slot + 1);
    item& it = items_[slot];
    set_weight_only(it, weight);
    it.active = active;
    if (it.pos != npos) return fix(it.pos);
    // ticks/weight >= now_ticks/now_weight, rounded up.
    std::uint64_t floor_ticks = (now_ticks_ * static_cast<std::uint64_t>(it.weight) + now_weight_ - 1) / now_weight_;
    it.ticks = std::max(it.ticks, floor_ticks);
    it.pos = static_cast<std::uint32_t>(heap_.size());
    heap_.push_back(slot);
    sift_up(it.pos);
  }
  void erase(std::uint32_t slot) {
    if (!contains(slot)) return;
    std::uint32_t pos = items_[slot].pos;
    items_[slot].pos = npos;
    std::uint32_t last = heap_.back();
    heap_.pop_back();
    if (pos < heap_.size()) {
      heap_[pos] = last;
      items_[last].pos = pos;
      fix(pos);
    }
  }
  // Forgets a slot entirely (it may be reused by another backend).
  void reset(std::uint32_t slot) {
    erase(slot);
    if (slot < items_.size()) items_[slot] = item{};
  }
  void set_weight(std::uint32_t slot, int weight) {
    if (slot >= items_.size()) return;
    set_weight_only(items_[slot], weight);
    if (contains(slot)) fix(items_[slot].pos);
  }
  void set_active(std::uint32_t slot, int active) {
    if (slot >= items_.size()) return;
    items_[slot].active = active;
    if (contains(slot)) fix(items_[slot].pos);
  }

  // Returns the best slot that `judge` takes, or npos. Slots judged `skip` stay
  // eligible; `evict` removes them. The chosen slot is charged one pick.
  template <class Judge>
  std::uint32_t pick(Judge&& judge) {
    std::uint32_t chosen = npos;
    std::uint32_t aside_small[8];
    std::vector<std::uint32_t> aside_big;
    std::size_t aside = 0;
    while (!heap_.empty()) {
      std::uint32_t top = heap_.front();
      verdict v = judge(top);
      if (v == verdict::take) {
        chosen = top;
        break;
      }
      erase(top);
      if (v == verdict::skip) {
        if (aside < 8) aside_small[aside++] = top;
        else aside_big.push_back(top);
      }
    }
    for (std::size_t i = 0; i < aside; ++i) reinsert(aside_small[i]);
    for (std::uint32_t s : aside_big) reinsert(s);
    if (chosen != npos) charge(chosen);
    return chosen;
  }

 private:
  struct item {
    std::uint64_t weight = 1;
    std::uint64_t ticks = 0;  // pass = ticks / weight
    int active = 0;
    std::uint32_t pos = npos;
  };

  // The registry admits only weights in [min_weight, max_weight] (>>types); the
  // clamp merely keeps every product below within 63 bits should one slip through.
  static void set_weight_only(item& it, int weight) {
    std::uint64_t w = static_cast<std::uint64_t>(std::min(std::max(weight, min_weight), max_weight));
    if (w == it.weight) return;
    it.ticks = it.ticks * w / it.weight;  // keep the pass where it was
    it.weight = w;
  }
  void reinsert(std::uint32_t slot) {
    item& it = items_[slot];
    it.pos = static_cast<std::uint32_t>(heap_.size());
    heap_.push_back(slot);
    sift_up(it.pos);
  }
  void charge(std::uint32_t slot) {
    item& it = items_[slot];
    if (it.ticks * now_weight_ > now_ticks_ * it.weight) {
      now_ticks_ = it.ticks;
      now_weight_ = it.weight;
    }
    ++it.ticks;
    fix(it.pos);
  }
  bool before(std::uint32_t a, std::uint32_t b) const noexcept {
    const item& x = items_[a];
    const item& y = items_[b];
    if (algorithm_ == algorithm::leastconn) {
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
  void fix(std::uint32_t pos) {
    std::uint32_t slot = heap_[pos];
    sift_up(pos);
    sift_down(items_[slot].pos);
  }
  void place(std::size_t pos, std::uint32_t slot) {
    heap_[pos] = slot;
    items_[slot].pos = static_cast<std::uint32_t>(pos);
  }
  void sift_up(std::size_t pos) {
    std::uint32_t slot = heap_[pos];
    while (pos > 0) {
      std::size_t parent = (pos - 1) / 2;
      if (!before(slot, heap_[parent])) break;
      place(pos, heap_[parent]);
      pos = parent;
    }
    place(pos, slot);
  }
  void sift_down(std::size_t pos) {
    std::uint32_t slot = heap_[pos];
    for (;;) {
      std::size_t child = 2 * pos + 1;
      if (child >= heap_.size()) break;
      if (child + 1 < heap_.size() && before(heap_[child + 1], heap_[child])) ++child;
      if (!before(heap_[child], slot)) break;
      place(pos, heap_[child]);
      pos = child;
    }
    place(pos, slot);
  }

  algorithm algorithm_;
  std::vector<item> items_;
  std::vector<std::uint32_t> heap_;
  std::uint64_t now_ticks_ = 0;  // the virtual time: the largest pass picked so far
  std::uint64_t now_weight_ = 1;
};

}  // namespace detail
}  // namespace harmony
