// Sans-IO unit tests. This unit also compiles the library implementation for the
// test binary (the reactor backend comes from the command line).
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"

#include <ostream>
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

using namespace harmony;

TEST_CASE("endpoints parse HOST:PORT and [IPv6]:PORT, and reject the rest") {
  endpoint ep;
  CHECK_FALSE(parse_endpoint("127.0.0.1:3000", ep));
  CHECK(ep.host == "127.0.0.1");
  CHECK(ep.port == 3000);
  CHECK_FALSE(parse_endpoint("[::1]:8080", ep));
  CHECK(ep.host == "::1");
  CHECK(ep.port == 8080);
  CHECK(ep.to_string() == "[::1]:8080");
  CHECK_FALSE(parse_endpoint("localhost:0", ep));
  CHECK(ep.port == 0);
  for (const char* bad : {"", "3000", "host", "host:", ":80", "::1:80", "[::1]80", "[::1]", "h:65536", "h:-1",
                          "h:12a", "a b:1", "[::1:80"})
    CHECK_MESSAGE(parse_endpoint(bad, ep) == errc::bad_address, bad);
}

TEST_CASE("durations parse with units") {
  duration d{};
  CHECK_FALSE(parse_duration("500ms", d));
  CHECK(d.count() == 500);
  CHECK_FALSE(parse_duration("30s", d));
  CHECK(d.count() == 30000);
  CHECK_FALSE(parse_duration("1m", d));
  CHECK(d.count() == 60000);
  CHECK_FALSE(parse_duration("2h", d));
  CHECK(d.count() == 7200000);
  CHECK_FALSE(parse_duration("250", d));
  CHECK(d.count() == 250);
  for (const char* bad : {"", "s", "1x", "-1s", "1.5s", "99999999999999999999s", "1 s"})
    CHECK_MESSAGE(parse_duration(bad, d) == errc::bad_duration, bad);
}

TEST_CASE("error codes carry harmony messages") {
  std::error_code e = errc::queue_timeout;
  CHECK(e.category().name() == std::string("harmony"));
  CHECK(e.message() == "timed out in the wait queue");
  CHECK(e == errc::queue_timeout);
  CHECK(e != errc::queue_full);
}

TEST_CASE("socket errors compare equal to the portable std::errc conditions") {
#if defined(_WIN32)
  // Winsock codes, and the completion-port codes overlapped operations report.
  CHECK(detail::system_error_code(WSAECONNREFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(ERROR_CONNECTION_REFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(WSAECONNRESET) == std::errc::connection_reset);
  CHECK(detail::system_error_code(ERROR_NETNAME_DELETED) == std::errc::connection_reset);
  CHECK(detail::system_error_code(WSAETIMEDOUT) == std::errc::timed_out);
  CHECK(detail::system_error_code(WSAEADDRINUSE) == std::errc::address_in_use);
  CHECK(detail::system_error_code(WSAEWOULDBLOCK) == std::errc::operation_would_block);
  CHECK(detail::would_block(WSAEWOULDBLOCK));
  CHECK(detail::system_error_code(WSAECONNREFUSED).message().find("refused") != std::string::npos);
  // An unmapped code stays itself.
  CHECK(detail::system_error_code(WSAEPROVIDERFAILEDINIT) != std::errc::connection_refused);
#else
  CHECK(detail::system_error_code(ECONNREFUSED) == std::errc::connection_refused);
  CHECK(detail::system_error_code(ECONNRESET) == std::errc::connection_reset);
  CHECK(detail::would_block(EAGAIN));
#endif
}

namespace {
std::map<std::uint32_t, int> picks(detail::selector& s, int n) {
  std::map<std::uint32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    auto slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
    REQUIRE(slot != detail::selector::npos);
    ++counts[slot];
  }
  return counts;
}
}  // namespace

TEST_CASE("round-robin splits exactly by weight and smoothly") {
  detail::selector s(algorithm::roundrobin);
  s.insert(0, 500, 0);
  s.insert(1, 500, 0);
  s.insert(2, 1000, 0);
  auto counts = picks(s, 400);
  CHECK(counts[0] == 100);
  CHECK(counts[1] == 100);
  CHECK(counts[2] == 200);
  // Smooth: the heavy backend never gets more than two in a row.
  detail::selector t(algorithm::roundrobin);
  t.insert(0, 1000, 0);
  t.insert(1, 500, 0);
  int run = 0, longest = 0;
  for (int i = 0; i < 300; ++i) {
    auto slot = t.pick([](std::uint32_t) { return detail::selector::verdict::take; });
    run = slot == 0 ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  CHECK(longest == 2);
}

TEST_CASE("leastconn: idle backends split by weight, busy ones are avoided") {
  detail::selector s(algorithm::leastconn);
  s.insert(0, 1000, 0);
  s.insert(1, 500, 0);
  auto counts = picks(s, 300);
  CHECK(counts[0] == 200);
  CHECK(counts[1] == 100);
  // With load: slot 0 has 4 open at weight 1000 (0.004), slot 1 has 1 at 500 (0.002).
  s.set_active(0, 4);
  s.set_active(1, 1);
  auto slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
  CHECK(slot == 1);
  s.set_active(1, 3);  // 0.006 now
  slot = s.pick([](std::uint32_t) { return detail::selector::verdict::take; });
  CHECK(slot == 0);
}

TEST_CASE("selector skips, evicts, re-weights and removes") {
  detail::selector s(algorithm::roundrobin);
  for (std::uint32_t i = 0; i < 4; ++i) s.insert(i, 100, 0);
  auto slot = s.pick([](std::uint32_t x) {
    return x == 0 ? detail::selector::verdict::skip
                  : x == 1 ? detail::selector::verdict::evict : detail::selector::verdict::take;
  });
  CHECK((slot == 2 || slot == 3));
  CHECK(s.contains(0));
  CHECK_FALSE(s.contains(1));
  CHECK(s.size() == 3);
  s.erase(0);
  s.set_weight(2, 300);
  auto counts = picks(s, 400);
  // 3:1 from here on; the passes they had before the change may shift one pick.
  CHECK(counts[2] >= 299);
  CHECK(counts[2] <= 301);
  CHECK(counts[2] + counts[3] == 400);
  CHECK(counts.count(0) == 0);
  // Nothing left to take.
  slot = s.pick([](std::uint32_t) { return detail::selector::verdict::skip; });
  CHECK(slot == detail::selector::npos);
  CHECK(s.size() == 2);
}

TEST_CASE("a newcomer starts at the current virtual time instead of catching up") {
  detail::selector s(algorithm::roundrobin);
  s.insert(0, 100, 0);
  picks(s, 1000);
  s.insert(1, 100, 0);
  auto counts = picks(s, 100);
  CHECK(counts[0] >= 49);
  CHECK(counts[1] >= 49);
}

TEST_CASE("registry: ids are random hex, eligibility follows drain, port and acks") {
  detail::registry r(algorithm::roundrobin, duration(1000), false);
  detail::address a;
  REQUIRE_FALSE(detail::resolve(endpoint{"127.0.0.1", 9}, a, false));
  std::string static_id, agent_id;
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, &static_id, 0));
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, true, &agent_id, 0));
  CHECK(static_id.size() == 32);
  CHECK(static_id.find_first_not_of("0123456789ABCDEF") == std::string::npos);
  CHECK(static_id != agent_id);
  std::set<std::string> seen;
  auto pick_ids = [&](std::int64_t now, int n) {
    seen.clear();
    for (int i = 0; i < n; ++i) {
      detail::pick_result p;
      if (!r.pick(now, "", {}, p)) return false;
      seen.insert(r.id_of(p.chosen));
      r.release(p.chosen, false);
    }
    return true;
  };
  REQUIRE(pick_ids(500, 4));
  CHECK(seen.size() == 2);
  // The agent's ack is 2000 ms old at 2000: only the static backend is eligible.
  REQUIRE(pick_ids(2000, 4));
  CHECK(seen == std::set<std::string>{static_id});
  CHECK_FALSE(r.ack(agent_id, 2000));
  REQUIRE(pick_ids(2100, 4));
  CHECK(seen.size() == 2);
  CHECK_FALSE(r.drain(static_id, true, 2100));
  REQUIRE(pick_ids(2100, 4));
  CHECK(seen == std::set<std::string>{agent_id});
  CHECK_FALSE(r.remove(agent_id));
  detail::pick_result p;
  CHECK_FALSE(r.pick(2100, "", {}, p));
  CHECK(r.remove(agent_id) == errc::unknown_backend);
  CHECK(r.set_weight("nope", 5) == errc::unknown_backend);
  CHECK(r.set_weight(static_id, 0) == errc::bad_option);
}

TEST_CASE("registry: persistence keeps a client on its backend until it leaves") {
  detail::registry r(algorithm::roundrobin, duration(60000), true);
  detail::address a;
  REQUIRE_FALSE(detail::resolve(endpoint{"127.0.0.1", 9}, a, false));
  std::string ids[3];
  for (auto& id : ids) REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, &id, 0));
  std::map<std::string, std::string> first;
  for (int client = 0; client < 6; ++client) {
    std::string key(1, static_cast<char>(client));
    for (int round = 0; round < 5; ++round) {
      detail::pick_result p;
      REQUIRE(r.pick(0, key, {}, p));
      std::string id = r.id_of(p.chosen);
      r.release(p.chosen, false);
      if (round == 0) first[key] = id;
      CHECK(first[key] == id);
    }
  }
  // Clients spread over all three backends.
  std::set<std::string> used;
  for (auto& e : first) used.insert(e.second);
  CHECK(used.size() == 3);
  // The backend of client 0 leaves: it is placed elsewhere, then stays there.
  std::string gone = first[std::string(1, '\0')];
  REQUIRE_FALSE(r.remove(gone));
  detail::pick_result p;
  REQUIRE(r.pick(0, std::string(1, '\0'), {}, p));
  std::string moved = r.id_of(p.chosen);
  CHECK(moved != gone);
  REQUIRE(r.pick(0, std::string(1, '\0'), {}, p));
  CHECK(r.id_of(p.chosen) == moved);
  // A tried (failed) sticky backend is not chosen again for that connection.
  std::vector<detail::lease> tried{p.chosen};
  detail::pick_result q;
  REQUIRE(r.pick(0, std::string(1, '\0'), tried, q));
  CHECK(r.id_of(q.chosen) != moved);
}

TEST_CASE("registry: the affinity table stays bounded") {
  detail::registry_limits limits;
  limits.affinity_entries = 100;
  limits.affinity_ttl_ms = 1000;
  detail::registry r(algorithm::roundrobin, duration(60000), true, limits);
  detail::address a;
  REQUIRE_FALSE(detail::resolve(endpoint{"127.0.0.1", 9}, a, false));
  REQUIRE_FALSE(r.add(endpoint{"127.0.0.1", 9}, &a, 500, false, nullptr, 0));
  for (int i = 0; i < 1000; ++i) {
    detail::pick_result p;
    REQUIRE(r.pick(i, std::to_string(i), {}, p));
    r.release(p.chosen, false);
  }
  CHECK(r.affinity_size() <= 100);
}

TEST_CASE("dialect detection from the first bytes") {
  using detail::dialect;
  const std::pair<const char*, dialect> cases[] = {
      {"", dialect::undecided},          {"N", dialect::undecided},       {"NI", dialect::undecided},
      {"NID:", dialect::legacy},         {"ACK:X:", dialect::legacy},     {"CLOSE:", dialect::legacy},
      {":", dialect::legacy},            {"BYE:", dialect::legacy},       {"list\n", dialect::native},
      {"hello harmony/1", dialect::native}, {"LIST", dialect::native},    {"NIX:", dialect::native},
      {"ID ", dialect::native},
  };
  for (const auto& c : cases) {
    INFO("first bytes: \"" << c.first << "\"");
    CHECK(detail::detect_dialect(c.first) == c.second);
  }
}

namespace {
std::vector<std::pair<std::string, std::string>> parse_legacy(const std::string& stream,
                                                              const std::vector<std::size_t>& cuts, bool* ok) {
  detail::legacy_parser p;
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t at = 0;
  *ok = true;
  auto feed = [&](std::string_view piece) {
    *ok = *ok && p.feed(piece, [&](std::string_view c, std::string_view a) { out.emplace_back(c, a); });
  };
  for (std::size_t cut : cuts) {
    feed(std::string_view(stream).substr(at, cut - at));
    at = cut;
  }
  feed(std::string_view(stream).substr(at));
  return out;
}
}  // namespace

TEST_CASE("legacy parser: the same messages however the stream is split") {
  const std::string stream = "NID::BAL:1000:SPORT:11081:::ACK:5F38AB:ID:5F38AB:BYE:CLOSE:5F38AB:";
  const std::vector<std::pair<std::string, std::string>> expected{
      {"NID", ""}, {"BAL", "1000"}, {"SPORT", "11081"}, {"ACK", "5F38AB"}, {"ID", "5F38AB"}, {"BYE", ""},
      {"CLOSE", "5F38AB"}};
  bool ok = false;
  CHECK(parse_legacy(stream, {}, &ok) == expected);
  CHECK(ok);
  std::vector<std::size_t> every;
  for (std::size_t i = 1; i < stream.size(); ++i) every.push_back(i);
  CHECK(parse_legacy(stream, every, &ok) == expected);
  CHECK(ok);
  std::mt19937 gen(11);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < stream.size(); ++i)
      if (gen() % 4 == 0) cuts.push_back(i);
    REQUIRE(parse_legacy(stream, cuts, &ok) == expected);
    REQUIRE(ok);
  }
}

TEST_CASE("legacy parser: unknown commands and oversized tokens are errors") {
  bool ok = true;
  parse_legacy("NID::HELLO:x:", {}, &ok);
  CHECK_FALSE(ok);
  parse_legacy("ACK:" + std::string(300, 'A') + ":", {}, &ok);
  CHECK_FALSE(ok);
  parse_legacy(std::string(300, 'A'), {100, 200}, &ok);  // no ':' at all, still bounded
  CHECK_FALSE(ok);
}

namespace {
// Random legacy-looking input: messages with arguments of every kind (empty,
// near and past the token limit, raw bytes), empty tokens, now and then a bad one.
std::string legacy_noise(std::mt19937& gen) {
  static const char* const commands[] = {"NID", "ID", "BAL", "SPORT", "ACK", "CLOSE"};
  std::string s;
  for (std::size_t parts = gen() % 40; parts > 0; --parts) {
    switch (gen() % 10) {
      case 0: s += "BYE:"; break;
      case 1: s += ":"; break;
      case 2:
        if (gen() % 3 == 0) s += "HELLO:";  // an unknown command ends the stream
        break;
      default: {
        s += commands[gen() % 6];
        s += ':';
        switch (gen() % 4) {
          case 0: break;
          case 1: s.append(250 + gen() % 10, 'A'); break;  // around the token limit
          case 2:
            for (std::size_t n = gen() % 12; n > 0; --n) s += static_cast<char>(gen() % 2 ? '\n' + gen() % 100 : gen() % 256);
            break;
          default: s += std::to_string(gen() % 100000);
        }
        if (gen() % 8) s += ':';
      }
    }
  }
  return s;
}

// Random admin input built from pieces the decoders care about (commands, ':',
// line ends, blanks, '=', long runs, raw bytes), so that every path is taken.
std::string codec_noise(std::mt19937& gen) {
  static const char* const words[] = {"NID", "ID", "BAL", "SPORT", "ACK", "CLOSE", "BYE", "FOO", "5F38AB", "1000",
                                      ":", ":", "::", "\n", "\r\n", " ", "\t", "=", "port=80", "list", "register"};
  std::string s;
  std::size_t parts = gen() % 60;
  for (std::size_t i = 0; i < parts; ++i) {
    switch (gen() % 9) {
      case 0: {  // whole tokens and lines up to, at and past their limits (256, 512)
        bool line = gen() % 2;
        s += line ? '\n' : ':';
        s.append((line ? 512 : 256) - 2 + gen() % 5, 'A');
        s += line ? (gen() % 2 ? "\r\n" : "\n") : ":";
        break;
      }
      case 1: s.append(static_cast<std::size_t>(gen() % 600), 'A'); break;
      case 2:
        for (std::size_t n = gen() % 8; n > 0; --n) s += static_cast<char>(gen() % 256);
        break;
      default: s += words[gen() % (sizeof words / sizeof words[0])];
    }
  }
  return s;
}

// The legacy stream decoded at once by a plain reading of the grammar: the
// messages, and whether the stream is well-formed.
std::vector<std::pair<std::string, std::string>> legacy_model(const std::string& s, bool& ok) {
  std::vector<std::pair<std::string, std::string>> out;
  ok = true;
  std::string command;
  bool want_argument = false;
  std::size_t at = 0;
  for (;;) {
    std::size_t colon = s.find(':', at);
    std::string token = s.substr(at, colon == std::string::npos ? std::string::npos : colon - at);
    if (token.size() > detail::legacy_parser::max_token) {
      ok = false;
      return out;
    }
    if (colon == std::string::npos) return out;  // an unfinished token waits for more
    at = colon + 1;
    if (want_argument) {
      out.emplace_back(command, token);
      want_argument = false;
    } else if (token == "BYE") {
      out.emplace_back(token, "");
    } else if (!token.empty()) {
      if (!detail::is_legacy_command(token)) {
        ok = false;
        return out;
      }
      command = token;
      want_argument = true;
    }
  }
}

// Lines at once: split at LF, one CR before it dropped; false once a line (with
// its CR) is longer than `limit`, whether finished or not.
std::vector<std::string> lines_model(const std::string& s, std::size_t limit, bool& ok) {
  std::vector<std::string> out;
  ok = true;
  std::size_t at = 0;
  for (;;) {
    std::size_t end = s.find('\n', at);
    std::string line = s.substr(at, end == std::string::npos ? std::string::npos : end - at);
    if (line.size() > limit) {
      ok = false;
      return out;
    }
    if (end == std::string::npos) return out;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back(line);
    at = end + 1;
  }
}

// The words of a command line, split at blanks.
std::vector<std::string> words_of(std::string_view line) {
  std::vector<std::string> out;
  std::string w;
  for (char c : line) {
    if (c == ' ' || c == '\t') {
      if (!w.empty()) out.push_back(w);
      w.clear();
    } else {
      w += c;
    }
  }
  if (!w.empty()) out.push_back(w);
  return out;
}
}  // namespace

TEST_CASE("admin decoders give the same result on random input however it is split") {
  std::mt19937 gen(7);
  const std::size_t line_limit = 512;
  for (int round = 0; round < 300; ++round) {
    std::string noise = round % 2 ? codec_noise(gen) : legacy_noise(gen);
    INFO("round " << round);
    bool legacy_ok = false, lines_ok = false;
    auto legacy_expected = legacy_model(noise, legacy_ok);
    auto lines_expected = lines_model(noise, line_limit, lines_ok);
    // The same bytes in random pieces, each decoder stopping where it reports an error.
    detail::legacy_parser legacy;
    detail::line_splitter lines(line_limit);
    std::vector<std::pair<std::string, std::string>> legacy_got;
    std::vector<std::string> lines_got;
    bool legacy_alive = true, lines_alive = true;
    std::size_t commands_checked = 0;
    for (std::size_t at = 0; at < noise.size();) {
      std::size_t n = std::min<std::size_t>(noise.size() - at, gen() % 64 + 1);
      std::string_view piece(noise.data() + at, n);
      at += n;
      if (legacy_alive)
        legacy_alive = legacy.feed(piece, [&](std::string_view c, std::string_view a) { legacy_got.emplace_back(c, a); });
      if (lines_alive)
        lines_alive = lines.feed(piece, [&](std::string_view line) {
          lines_got.emplace_back(line);
          // Every word of the line lands in the verb, an argument or an option, in order.
          auto c = detail::parse_command(line);
          std::vector<std::string> words = words_of(line);
          std::vector<std::string> rebuilt;
          if (!c.verb.empty()) rebuilt.emplace_back(c.verb);
          for (auto a : c.args) {
            CHECK(a.find_first_of(" \t") == std::string_view::npos);
            CHECK((a.find('=') == std::string_view::npos || a.find('=') == 0));
          }
          CHECK(c.verb.empty() == words.empty());
          CHECK(1 + c.args.size() + c.options.size() == std::max<std::size_t>(words.size(), 1));
          for (auto& o : c.options) {
            CHECK_FALSE(o.first.empty());
            std::string word = std::string(o.first) + "=" + std::string(o.second);
            CHECK(std::find(words.begin() + 1, words.end(), word) != words.end());
          }
          ++commands_checked;
        });
    }
    CHECK(legacy_alive == legacy_ok);
    CHECK(legacy_got == legacy_expected);
    CHECK(lines_alive == lines_ok);
    CHECK(lines_got == lines_expected);
    CHECK(commands_checked == lines_expected.size());
  }
}

TEST_CASE("line splitter and command parser") {
  detail::line_splitter lines(16);
  std::vector<std::string> got;
  auto keep = [&](std::string_view l) { got.emplace_back(l); };
  CHECK(lines.feed("li", keep));
  CHECK(lines.feed("st\r\nstats\n\nping", keep));
  CHECK(got == std::vector<std::string>{"list", "stats", ""});
  CHECK(lines.feed("\n", keep));
  CHECK(got.back() == "ping");
  CHECK_FALSE(lines.feed(std::string(17, 'x'), keep));
  auto c = detail::parse_command("  register  port=80 weight=5\tid=AB extra  ");
  CHECK(c.verb == "register");
  CHECK(c.args == std::vector<std::string_view>{"extra"});
  std::string_view v;
  CHECK(c.option("port", v));
  CHECK(v == "80");
  CHECK(c.option("id", v));
  CHECK(v == "AB");
  CHECK_FALSE(c.option("host", v));
  CHECK(detail::legacy_weight("1000") == 1000);
  CHECK(detail::legacy_weight("heavy") == 500);
  CHECK(detail::legacy_weight("0") == 500);
  CHECK(detail::legacy_weight("") == 500);
  CHECK(detail::legacy_weight("99999999999") == 500);
}
