// PROXY protocol headers as an upstream balancer (or an attacker in its place)
// sends them: parsing reads nothing outside the bytes, a header read in pieces
// reads as it does at once, and a header with addresses writes back to one
// that reads the same.
#include "fuzz.hpp"

using namespace harmony;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  using status = detail::proxy_parse::status;
  detail::proxy_parse whole = detail::parse_proxy_header(in);
  if (whole.result == status::done) {
    FUZZ_CHECK(whole.consumed > 0 && whole.consumed <= size && whole.consumed <= detail::proxy_header_max);
    // Every shorter prefix is incomplete: a reader never refuses a header that is still arriving.
    for (std::size_t n = 0; n < whole.consumed; n += 1 + n / 8)
      FUZZ_CHECK(detail::parse_proxy_header(in.substr(0, n)).result == status::incomplete);
    if (!whole.addresses.local) {
      std::string again = detail::encode_proxy_header(whole.version, whole.addresses);
      detail::proxy_parse back = detail::parse_proxy_header(again);
      FUZZ_CHECK(back.result == status::done && back.consumed == again.size());
      FUZZ_CHECK(back.addresses.source == whole.addresses.source);
      FUZZ_CHECK(back.addresses.destination == whole.addresses.destination);
    }
  } else if (whole.result == status::invalid) {
    FUZZ_CHECK(whole.why && *whole.why);
  } else {
    FUZZ_CHECK(size < detail::proxy_header_max);
  }
  // Address text: what parses prints back to text that parses to the same address.
  detail::resolved_address a;
  std::string_view text = in.substr(0, std::min<std::size_t>(size, 64));
  if (detail::parse_address_text(text, a)) {
    detail::resolved_address b;
    FUZZ_CHECK(detail::parse_address_text(detail::address_text(a), b) && a == b);
  }
  return 0;
}
