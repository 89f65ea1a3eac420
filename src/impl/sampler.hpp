namespace harmony {
namespace detail {

// >>sampler  sans-IO weighted random choice: a small PRNG, a Fenwick tree, power of two choices
// `random` draws backends with probability proportional to their weight. The
// weights live in a Fenwick (binary indexed) tree over the registry's slots, so
// that setting one weight and drawing one slot are both O(log n). The random
// source is injected: the registry owns one fast_random, seeded once from the
// OS CSPRNG when the server is made (tests seed it with a constant).

// splitmix64 (Steele, Lea, Flood 2014): 64 bits of state, one multiply-xorshift
// chain per number; statistically sound for drawing backends, not for secrets.
class fast_random {
 public:
  explicit fast_random(std::uint64_t seed = 0x9E3779B97F4A7C15ULL) noexcept : state_(seed) {}
  void seed(std::uint64_t s) noexcept { state_ = s; }
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, without modulo bias (rejects the uneven tail).
  std::uint64_t below(std::uint64_t n) noexcept {
    std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    for (;;) {
      std::uint64_t x = next();
      if (x < limit) return x % n;
    }
  }

 private:
  std::uint64_t state_;
};

// A weight per slot (0: not drawn) and draws in proportion to them.
class weighted_sampler {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;

  std::uint64_t total() const noexcept { return total_; }
  std::uint64_t weight(std::uint32_t slot) const noexcept { return slot < weights_.size() ? weights_[slot] : 0; }

  // Sets a slot's weight; 0 takes it out of the draw.
  void set(std::uint32_t slot, std::uint64_t weight) {
    if (slot >= weights_.size()) {
      if (weight == 0) return;
      grow(slot + 1);
    }
    std::uint64_t old = weights_[slot];
    if (old == weight) return;
    weights_[slot] = weight;
    total_ += weight;
    total_ -= old;
    // Two's complement: adding (weight - old) mod 2^64 is the signed change.
    std::uint64_t delta = weight - old;
    for (std::size_t i = slot + 1; i <= capacity_; i += i & (~i + 1)) tree_[i] += delta;
  }

  // The slot whose share of [0, total) holds `point` (point < total), O(log n).
  std::uint32_t find(std::uint64_t point) const noexcept {
    if (point >= total_) return npos;
    std::size_t pos = 0;
    for (std::size_t step = capacity_; step > 0; step >>= 1) {
      std::size_t next = pos + step;
      if (next <= capacity_ && tree_[next] <= point) {
        pos = next;
        point -= tree_[next];
      }
    }
    return static_cast<std::uint32_t>(pos);  // tree index pos + 1 is slot pos
  }

  // One slot drawn with probability weight/total, or npos when every weight is 0.
  std::uint32_t draw(fast_random& random) const noexcept {
    return total_ == 0 ? npos : find(random.below(total_));
  }

 private:
  // Capacity is a power of two, so that find() can descend by halving steps.
  void grow(std::size_t at_least) {
    std::size_t cap = capacity_ ? capacity_ : 8;
    while (cap < at_least) cap *= 2;
    weights_.resize(cap, 0);
    capacity_ = cap;
    tree_.assign(cap + 1, 0);
    for (std::size_t i = 1; i <= cap; ++i) {
      tree_[i] += weights_[i - 1];
      std::size_t parent = i + (i & (~i + 1));
      if (parent <= cap) tree_[parent] += tree_[i];
    }
  }

  std::vector<std::uint64_t> weights_;
  std::vector<std::uint64_t> tree_;  // 1-based Fenwick tree over weights_
  std::size_t capacity_ = 0;
  std::uint64_t total_ = 0;
};

// Weighted power of two choices (Mitzenmacher): draws two distinct slots by
// weight that `judge` takes and returns the one `less_loaded` prefers (the
// first on a tie), the only one when just one is left, or npos. Slots judged
// `skip` are set aside for this pick; `evict` takes them out of the sampler for
// good (the caller re-adds them when they come back). O(log n) per draw.
template <class Judge, class LessLoaded>
std::uint32_t pick_two(weighted_sampler& sampler, fast_random& random, Judge&& judge, LessLoaded&& less_loaded) {
  using verdict = selector::verdict;
  struct aside {
    std::uint32_t slot;
    std::uint64_t weight;
  };
  aside small[8];
  std::vector<aside> big;
  std::size_t n = 0;
  auto put_aside = [&](std::uint32_t slot) {
    aside a{slot, sampler.weight(slot)};
    if (n < 8) small[n++] = a;
    else big.push_back(a);
    sampler.set(slot, 0);
  };
  auto one = [&]() -> std::uint32_t {
    for (;;) {
      std::uint32_t s = sampler.draw(random);
      if (s == weighted_sampler::npos) return s;
      verdict v = judge(s);
      if (v == verdict::take) return s;
      if (v == verdict::skip) put_aside(s);
      else sampler.set(s, 0);
    }
  };
  std::uint32_t first = one();
  std::uint32_t second = weighted_sampler::npos;
  if (first != weighted_sampler::npos) {
    put_aside(first);  // the second must be another slot
    second = one();
  }
  for (std::size_t i = 0; i < n; ++i) sampler.set(small[i].slot, small[i].weight);
  for (const aside& a : big) sampler.set(a.slot, a.weight);
  if (second == weighted_sampler::npos) return first;
  return less_loaded(second, first) ? second : first;
}

}  // namespace detail
}  // namespace harmony
