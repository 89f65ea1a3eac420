// DNS answers as the resolver thread receives them from the network: decoding
// never reads outside the message, and what it returns is what a name server
// may legally say (valid names, ports as given); resolv.conf text gives only
// usable name servers; the SRV mapping gives a backend per usable record only.
#include "fuzz.hpp"

using namespace harmony;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  std::uint16_t id = size >= 2 ? static_cast<std::uint16_t>((data[0] << 8) | data[1]) : 0;
  detail::dns_answer answer;
  if (!detail::dns_decode_answer(in, id, "_s._tcp.example", detail::dns_type_srv, answer)) {
    for (const detail::srv_record& s : answer.services)
      FUZZ_CHECK(s.target.empty() || detail::dns_valid_name(s.target));
    for (const detail::dns_address_record& a : answer.addresses) {
      FUZZ_CHECK(detail::dns_valid_name(a.name) || a.name.empty());
      FUZZ_CHECK(a.address.family == detail::ip_family::v4 || a.address.family == detail::ip_family::v6);
    }
    std::vector<detail::discovered_address> out;
    auto resolve = [](const endpoint& at, std::vector<detail::resolved_address>& found) {
      found = {detail::resolved_address::v4(192, 0, 2, static_cast<std::uint8_t>(at.host.size()), 0)};
      return std::error_code{};
    };
    std::size_t usable = 0;
    for (const detail::srv_record& s : answer.services) usable += !s.target.empty() && s.port != 0;
    std::error_code e = detail::srv_backends(answer, resolve, out);
    FUZZ_CHECK(!e == (usable > 0));
    for (const detail::discovered_address& a : out) {
      FUZZ_CHECK(a.to.port != 0);
      FUZZ_CHECK(a.weight >= min_weight && a.weight <= max_weight);
    }
  }
  // Every offset as the start of a name: bounded, and a name read is a valid one.
  for (std::size_t at = 0; at < std::min<std::size_t>(size, 64); ++at) {
    std::size_t next = at;
    std::string name;
    if (detail::dns_read_name(in, next, name)) {
      FUZZ_CHECK(next > at && next <= size);
      FUZZ_CHECK(name.empty() || detail::dns_valid_name(name));
    }
  }
  // A query for any name it accepts is one question that our decoder refuses as an answer.
  std::string query;
  std::string_view name = in.substr(0, std::min<std::size_t>(size, 300));
  if (detail::dns_encode_query(7, name, detail::dns_type_srv, query)) {
    FUZZ_CHECK(query.size() <= 12 + 255 + 4);
    FUZZ_CHECK(detail::dns_decode_answer(query, 7, name, detail::dns_type_srv, answer));
  }
  for (const endpoint& e : detail::parse_resolv_conf(in)) {
    FUZZ_CHECK(!e.host.empty() && e.port == detail::dns_port);
    for (char c : e.host) FUZZ_CHECK(c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '%');
  }
  return 0;
}
