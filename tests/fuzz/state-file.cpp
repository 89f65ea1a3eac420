// The state file as harmonyd reads it at start: anything on disk (a file cut by a
// crash, edited by hand, or not ours at all) parses without harm, every problem
// names a line, and what it reads writes back to a file that reads the same.
#include "fuzz.hpp"

using namespace harmony;

namespace {
bool same(const detail::state_record& a, const detail::state_record& b) {
  return a.id == b.id && a.kind == b.kind && a.host == b.host && a.addr == b.addr && a.port == b.port &&
         a.weight == b.weight && a.maxconn == b.maxconn && a.backup == b.backup && a.drained == b.drained &&
         a.reported == b.reported && a.ack_unix_ms == b.ack_unix_ms && a.source == b.source;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in = fuzz::as_text(data, size);
  detail::parsed_state first = detail::parse_state(in);
  std::size_t lines = 1;
  for (char c : in) lines += c == '\n';
  for (const detail::state_problem& p : first.problems) {
    FUZZ_CHECK(p.line <= lines);
    FUZZ_CHECK(!p.what.empty());
  }
  std::string again = detail::format_state(first.records);
  detail::parsed_state second = detail::parse_state(again);
  FUZZ_CHECK(second.complete);
  FUZZ_CHECK(second.problems.empty());
  FUZZ_CHECK(second.records.size() == first.records.size());
  for (std::size_t i = 0; i < first.records.size() && i < second.records.size(); ++i)
    FUZZ_CHECK(same(first.records[i], second.records[i]));
  return 0;
}
