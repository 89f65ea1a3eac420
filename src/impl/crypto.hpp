#include <array>
#include <cstdint>

namespace harmony {
namespace detail {

// >>crypto  sans-IO SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104), constant-time compare
// What the admin handshake needs and nothing more: no dependency, no OS call.
// Checked against the FIPS 180 examples and the RFC 4231 vectors (tests/unit.cpp).
class sha256 {
 public:
  static constexpr std::size_t digest_size = 32;
  static constexpr std::size_t block_size = 64;
  using digest = std::array<std::uint8_t, digest_size>;

  sha256() noexcept { reset(); }
  void reset() noexcept {
    // FIPS 180-4 5.3.3: the first 32 bits of the fractional parts of the square
    // roots of the first eight primes.
    static constexpr std::uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (int i = 0; i < 8; ++i) h_[i] = initial[i];
    length_ = 0;
    used_ = 0;
  }
  void update(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const std::uint8_t*>(data);
    length_ += static_cast<std::uint64_t>(n);
    while (n > 0) {
      std::size_t take = std::min(n, block_size - used_);
      std::memcpy(block_ + used_, p, take);
      used_ += take;
      p += take;
      n -= take;
      if (used_ == block_size) {
        compress(block_);
        used_ = 0;
      }
    }
  }
  void update(std::string_view text) noexcept { update(text.data(), text.size()); }
  // Pads (5.1.1: a 1 bit, zeros, the 64-bit bit length) and gives the hash; reset() to reuse.
  digest finish() noexcept {
    std::uint64_t bits = length_ * 8;
    static constexpr std::uint8_t one = 0x80;
    static constexpr std::uint8_t zeros[block_size] = {};
    update(&one, 1);
    std::size_t pad = used_ <= 56 ? 56 - used_ : block_size + 56 - used_;
    update(zeros, pad);
    std::uint8_t tail[8];
    for (int i = 0; i < 8; ++i) tail[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
    update(tail, 8);
    digest out{};
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[static_cast<std::size_t>(4 * i + j)] = static_cast<std::uint8_t>(h_[i] >> (24 - 8 * j));
    return out;
  }
  static digest of(std::string_view text) noexcept {
    sha256 h;
    h.update(text);
    return h.finish();
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) noexcept { return (x >> n) | (x << (32 - n)); }

  // 6.2.2: one 512-bit block.
  void compress(const std::uint8_t* b) noexcept {
    // 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes.
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    };
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = static_cast<std::uint32_t>(b[4 * t]) << 24 | static_cast<std::uint32_t>(b[4 * t + 1]) << 16 |
             static_cast<std::uint32_t>(b[4 * t + 2]) << 8 | static_cast<std::uint32_t>(b[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int t = 0; t < 64; ++t) {
      std::uint32_t big1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      std::uint32_t choose = (e & f) ^ (~e & g);
      std::uint32_t t1 = h + big1 + choose + k[t] + w[t];
      std::uint32_t big0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      std::uint32_t majority = (a & bb) ^ (a & c) ^ (bb & c);
      std::uint32_t t2 = big0 + majority;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = bb;
      bb = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += bb;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  std::uint32_t h_[8];
  std::uint64_t length_;  // bytes so far
  std::uint8_t block_[block_size];
  std::size_t used_;  // bytes of block_ filled
};

// RFC 2104: H((K' ^ opad) || H((K' ^ ipad) || message)), K' the key, hashed first
// when longer than a block, padded with zeros to a block.
inline sha256::digest hmac_sha256(std::string_view key, std::string_view message) noexcept {
  std::uint8_t k[sha256::block_size] = {};
  if (key.size() > sha256::block_size) {
    sha256::digest d = sha256::of(key);
    std::memcpy(k, d.data(), d.size());
  } else if (!key.empty()) {
    std::memcpy(k, key.data(), key.size());
  }
  std::uint8_t pad[sha256::block_size];
  sha256 inner;
  for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x36);
  inner.update(pad, sizeof pad);
  inner.update(message);
  sha256::digest inner_hash = inner.finish();
  sha256 outer;
  for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x5c);
  outer.update(pad, sizeof pad);
  outer.update(inner_hash.data(), inner_hash.size());
  return outer.finish();
}

// Lowercase hex of any bytes.
inline std::string to_hex(const std::uint8_t* bytes, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}
inline std::string to_hex(const sha256::digest& d) { return to_hex(d.data(), d.size()); }

// Equal strings, in a time that depends on their lengths only, never on where they
// first differ: a proof is checked without telling an attacker how much was right.
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  unsigned difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    difference |= static_cast<unsigned>(static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]));
  // Read through a volatile so the compiler cannot turn the loop into an early exit.
  volatile unsigned result = difference;
  return result == 0;
}

}  // namespace detail
}  // namespace harmony
