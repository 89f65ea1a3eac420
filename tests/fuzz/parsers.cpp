// The parsers of option and command values: parse_integer / parse_weight
// against a reference (optional '-', digits, in range) and printing back;
// parse_endpoint and parse_duration round-trip through their printers; the
// names (algorithm, log level, readiness) through to_string.
#include "fuzz.hpp"

using namespace harmony;

namespace {
// The reference integer: an optional '-', 1..19 digits after leading zeros are
// dropped, in [low, high]; computed in 128 bits so nothing overflows.
bool reference_integer(std::string_view text, long long low, long long high, long long& out) {
  bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  if (text.empty() || text.size() > 20) return false;
  __int128 v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (negative) v = -v;
  if (v < low || v > high) return false;
  out = static_cast<long long>(v);
  return true;
}

template <class T>
void names(std::string_view text, std::error_code (*parse)(std::string_view, T&)) {
  T value{};
  if (!parse(text, value)) FUZZ_CHECK(text == to_string(value));
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  // Bounds from the first 16 bytes when there are that many.
  long long low = 0, high = 0;
  if (in.size() >= 16) {
    std::memcpy(&low, in.data(), 8);
    std::memcpy(&high, in.data() + 8, 8);
    if (low > high) std::swap(low, high);
    if (in.size() % 2) low = -1, high = 100000;  // the ranges the options use, often
  }
  for (std::string_view text : {in, in.size() >= 16 ? in.substr(16) : in}) {
    long long want = 42;
    for (auto range : {std::make_pair(low, high), std::make_pair(std::numeric_limits<long long>::min(),
                                                                 std::numeric_limits<long long>::max())}) {
      long long got = 42;
      want = 42;
      bool ok = !parse_integer(text, range.first, range.second, got);
      FUZZ_CHECK(ok == reference_integer(text, range.first, range.second, want));
      FUZZ_CHECK(got == want);  // the value, or untouched on an error
      if (ok) {
        long long back = 0;
        FUZZ_CHECK(!parse_integer(std::to_string(got), range.first, range.second, back) && back == got);
      }
    }
    int w = -7;
    if (!parse_weight(text, w)) {
      FUZZ_CHECK(w >= min_weight && w <= max_weight);
      FUZZ_CHECK(reference_integer(text, min_weight, max_weight, want) && want == w);
    } else {
      FUZZ_CHECK(w == -7);
    }
    std::uint64_t u = 0;
    if (detail::parse_uint(text, 65535, u)) FUZZ_CHECK(u <= 65535 && reference_integer(text, 0, 65535, want) && text[0] != '-');

    endpoint at;
    if (!parse_endpoint(text, at)) {
      FUZZ_CHECK(!at.host.empty());
      for (char c : at.host) FUZZ_CHECK(static_cast<unsigned char>(c) > ' ' && c != '[' && c != ']' && c != '/');
      endpoint back;
      FUZZ_CHECK(!parse_endpoint(at.to_string(), back));
      FUZZ_CHECK(back.host == at.host && back.port == at.port);
    }

    duration d{};
    if (!parse_duration(text, d)) {
      FUZZ_CHECK(d.count() >= 0);
      duration back{};
      FUZZ_CHECK(!parse_duration(format_duration(d), back) && back == d);
    }
    names<algorithm>(text, parse_algorithm);
    names<log_level>(text, parse_log_level);
    names<readiness>(text, parse_readiness);
  }
  return 0;
}
