// Stateful: one byte stream, cut at fuzzer-chosen points, decodes exactly as the
// whole stream does: legacy tokens, native lines, and the admin command
// handler's replies and effects (on two registries with the same ids).
#include "fuzz.hpp"

using namespace harmony;

namespace {
struct decoded {
  std::vector<std::string> items;
  bool ok = true;
  bool operator==(const decoded& o) const { return items == o.items && ok == o.ok; }
};

template <class Parser>
decoded run(const std::vector<std::string_view>& pieces, Parser parser) {
  decoded d;
  for (std::string_view piece : pieces) {
    if (!d.ok) break;
    d.ok = parser.feed(piece, [&](std::string_view a, std::string_view b = {}) {
      d.items.push_back(std::string(a) + '\0' + std::string(b));
    });
  }
  return d;
}

// The replies, then the effects: the effects of one feed come after its replies,
// so only each sequence on its own is the same however the stream is cut.
void describe(const detail::admin_result& r, std::string& replies, std::string& effects) {
  replies += r.text();
  for (const detail::admin_effect& e : r.effects)
    effects += "\n[effect " + std::to_string(static_cast<int>(e.what)) + " " + e.id + " " + e.previous + " " +
           std::to_string(e.limit) + (e.graceful ? " graceful " : " ") + e.why + "]";
}

std::string admin(const std::vector<std::string_view>& pieces, bool refuse_legacy) {
  fuzz::admin_world world;
  detail::admin_protocol p = fuzz::agent_connection(refuse_legacy, 128);
  std::string all, effects;
  for (std::string_view piece : pieces) describe(world.feed(p, piece), all, effects);
  all += effects;
  for (const backend_info& b : world.backends.lock()->list(world.now))
    all += "\n" + b.id + " " + b.address.to_string() + " " + std::to_string(b.weight) + " " + b.state;
  return all;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::split_input s = fuzz::split(fuzz::as_text(data, size));
  std::vector<std::string_view> whole{s.payload};

  FUZZ_CHECK(run(s.pieces, detail::legacy_parser()) == run(whole, detail::legacy_parser()));
  FUZZ_CHECK(run(s.pieces, detail::line_splitter(64)) == run(whole, detail::line_splitter(64)));
  bool refuse_legacy = size > 0 && (data[0] & 0x10);
  FUZZ_CHECK(admin(s.pieces, refuse_legacy) == admin(whole, refuse_legacy));
  return 0;
}
