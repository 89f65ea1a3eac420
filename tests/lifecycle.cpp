// Keeping what it has: a graceful stop (server::shutdown) lets the connections in
// flight finish, and --state-file keeps the registry of agents across a restart.
#include "support.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>

using namespace test;

namespace {

constexpr std::size_t big = 4u << 20;  // 4 MiB

std::uint64_t active(const harmony::server& srv) { return srv.stats().active; }

// A file name of its own in the temporary directory, removed (with its .tmp) at the end.
struct temporary_file {
  temporary_file() {
    static std::atomic<int> counter{0};
    path = (std::filesystem::temp_directory_path() /
            ("harmony-state-" + std::to_string(std::random_device{}()) + "-" + std::to_string(++counter)))
               .string();
  }
  ~temporary_file() {
    std::error_code e;
    std::filesystem::remove(path, e);
    std::filesystem::remove(path + ".tmp", e);
  }
  std::string read() const {
    std::string text;
    opened(text);
    return text;
  }
  // False when the file cannot be opened now (there is none yet; on Windows, the
  // moment the writer renames over it).
  bool opened(std::string& text) const {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    text.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return true;
  }
  void write(const std::string& text) const {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  std::string path;
};

// The log of a server, kept for the test to read.
struct log_capture {
  void attach(harmony::server_options& o) {
    o.level = harmony::log_level::info;
    o.log = [this](harmony::log_level, std::string_view m) {
      std::lock_guard<std::mutex> lock(mutex);
      text.append(m.data(), m.size()).append("\n");
    };
  }
  bool has(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex);
    return text.find(what) != std::string::npos;
  }
  std::string all() {
    std::lock_guard<std::mutex> lock(mutex);
    return text;
  }
  std::mutex mutex;
  std::string text;
};

// Whether `text` is a whole state file (its header, then its backend lines, then the
// `end N` that counts them), read here without the library's parser. `count`: N.
bool whole_state(const std::string& text, std::size_t* count = nullptr) {
  std::size_t header = text.find("harmony-state 1\n");
  std::size_t end = text.rfind("end ");
  if (header == std::string::npos || end == std::string::npos || text.empty() || text.back() != '\n') return false;
  std::size_t lines = 0;
  for (std::size_t at = text.find("\nbackend "); at != std::string::npos && at < end; at = text.find("\nbackend ", at + 1))
    ++lines;
  if (text.substr(end) != "end " + std::to_string(lines) + "\n") return false;
  if (count) *count = lines;
  return true;
}

const harmony::backend_info* find(const std::vector<harmony::backend_info>& list, const std::string& id) {
  for (const auto& b : list)
    if (b.id == id) return &b;
  return nullptr;
}

}  // namespace

TEST_CASE("shutdown: four 4 MiB transfers in flight all finish byte-exact; new clients are refused meanwhile") {
  for (int workers : {1, 2}) {
    CAPTURE(workers);
    std::string data = random_bytes(big, 41);
    gate go;
    backend b(gated_sender(data, go));
    harmony::server_options o = quiet_options();
    o.workers = workers;
    log_capture log;
    log.attach(o);
    running_server s(o);
    s.add(b);
    std::string address = s.address();
    std::vector<std::future<std::string>> transfers;
    for (int i = 0; i < 4; ++i) transfers.push_back(fetch(address));
    REQUIRE(eventually([&] { return b.accepted() == 4 && active(s.srv) == 4; }));

    auto began = std::chrono::steady_clock::now();
    auto drain = std::async(std::launch::async, [&] { return s.srv.shutdown(std::chrono::seconds(30)); });
    // The listen port closes at once, while the transfers go on.
    REQUIRE(eventually([&] { return log.has("draining: "); }));
    CHECK(log.has("draining: the listen port is closed, 4 connections open"));
    REQUIRE(eventually([&] { return !connect_to(address); }));
    CHECK_FALSE(connect_to(address));
    CHECK(drain.wait_for(0ms) == std::future_status::timeout);
    go.open();
    for (auto& t : transfers) {
      std::string got = t.get();
      CHECK(got.size() == data.size());
      CHECK(got == data);
    }
    // It returns as soon as the last one is done, long before its deadline.
    REQUIRE(drain.wait_for(10s) == std::future_status::ready);
    harmony::drain_report r = drain.get();
    CHECK(std::chrono::steady_clock::now() - began < 10s);
    CHECK(r.open == 4);
    CHECK(r.finished >= 4);  // and the probes that came in before the port closed
    CHECK(r.cut == 0);
    CHECK(log.has("connections finished, none cut"));
    CHECK(s.srv.listen_endpoint().port == 0);  // stopped: the threads are joined
    CHECK(s.srv.shutdown(1s).open == 0);       // not running: nothing to do
  }
}

TEST_CASE("shutdown: a transfer that outlives the deadline is cut at the deadline") {
  holding_backend held("held");
  harmony::server_options o = quiet_options();
  o.workers = 2;
  log_capture log;
  log.attach(o);
  running_server s(o);
  s.add(held.server());
  sock c = connect_to(s.address());
  REQUIRE(c);
  c.set_timeout(5s);
  CHECK(c.read_n(4) == "held");
  auto began = std::chrono::steady_clock::now();
  harmony::drain_report r = s.srv.shutdown(std::chrono::milliseconds(300));
  auto took = std::chrono::steady_clock::now() - began;
  CHECK(took >= 290ms);
  CHECK(took < 5s);
  CHECK(r.open == 1);
  CHECK(r.finished == 0);
  CHECK(r.cut == 1);
  CHECK(log.has("drain ended at the deadline"));
  std::string rest;
  bool eof = c.read_to_eof(rest);  // closed: a FIN or a reset, and nothing more
  CHECK(rest.empty());
  (void)eof;
  held.release();
}

TEST_CASE("shutdown: a queued connection is still served when a slot frees up before the deadline") {
  std::string data = random_bytes(100000, 5);
  gate go;
  backend b(gated_sender(data, go));
  harmony::server_options o = quiet_options();
  o.concurrency = 1;
  log_capture log;
  log.attach(o);
  running_server s(o);
  s.add(b);
  auto first = fetch(s.address());
  REQUIRE(eventually([&] { return b.accepted() == 1; }));
  auto second = fetch(s.address());
  REQUIRE(eventually([&] { return s.srv.stats().queued == 1; }));
  auto drain = std::async(std::launch::async, [&] { return s.srv.shutdown(std::chrono::seconds(30)); });
  REQUIRE(eventually([&] { return log.has("draining: "); }));
  REQUIRE(eventually([&] { return !connect_to(s.address()); }));
  go.open();
  CHECK(first.get() == data);
  CHECK(second.get() == data);
  REQUIRE(drain.wait_for(10s) == std::future_status::ready);
  harmony::drain_report r = drain.get();
  CHECK(r.open == 2);
  CHECK(r.finished >= 2);  // and the probes that came in before the port closed
  CHECK(r.cut == 0);
}

TEST_CASE("shutdown: ends run() on its thread; stop() cuts a drain short; with nothing open it returns at once") {
  holding_backend held("held");
  harmony::server_options o = quiet_options();
  harmony::server srv(o);
  REQUIRE_FALSE(srv.add_backend(held.server().address(), 500));
  auto running = std::async(std::launch::async, [&] { return srv.run(); });
  REQUIRE(eventually([&] { return srv.listen_endpoint().port != 0; }));
  sock c = connect_to(srv.listen_endpoint());
  REQUIRE(c);
  c.set_timeout(5s);
  CHECK(c.read_n(4) == "held");
  auto drain = std::async(std::launch::async, [&] { return srv.shutdown(std::chrono::seconds(30)); });
  REQUIRE(eventually([&] { return !connect_to(srv.listen_endpoint()); }));
  srv.stop();  // from another thread: the drain ends now, with the connection cut
  REQUIRE(drain.wait_for(5s) == std::future_status::ready);
  CHECK(drain.get().cut >= 1);  // and a probe that came in before the port closed, if still open
  REQUIRE(running.wait_for(5s) == std::future_status::ready);
  CHECK_FALSE(running.get());
  held.release();

  // Nothing open: the drain is over as soon as it began.
  running_server idle(quiet_options());
  auto began = std::chrono::steady_clock::now();
  harmony::drain_report r = idle.srv.shutdown(std::chrono::seconds(30));
  CHECK(std::chrono::steady_clock::now() - began < 2s);
  CHECK(r.open == 0);
  CHECK(r.cut == 0);
}

TEST_CASE("state file: a legacy agent registered before a restart is known after it, weight and port kept") {
  temporary_file file;
  backend web(named("web"));
  std::string id;
  {
    harmony::server_options o = quiet_options();
    o.state_file = file.path;
    running_server s(o);
    id = legacy_register(s.srv.admin_endpoint().to_string(), 1000, web.at().port);
    REQUIRE(id.size() == 32);
    // Written shortly after the change, not only at the stop.
    REQUIRE(eventually([&] {
      std::string text = file.read();
      return text.find(id) != std::string::npos && text.find("weight=1000") != std::string::npos &&
             text.find("port=" + std::to_string(web.at().port)) != std::string::npos;
    }));
  }
  harmony::server_options o = quiet_options();
  o.state_file = file.path;
  log_capture log;
  log.attach(o);
  running_server s(o);
  CHECK(log.has("1 backend restored"));
  auto list = s.srv.backends();
  const harmony::backend_info* b = find(list, id);
  REQUIRE(b);
  CHECK(b->weight == 1000);
  CHECK(b->address.port == web.at().port);
  CHECK(b->state == "up");
  // The agent's next ack, with its old id, is recognised: no BID.
  std::string ack = "ACK:" + id + ":ID:" + id + ":";
  CHECK(admin_exchange(s.srv.admin_endpoint().to_string(), {ack}, ack.size()) == ack);
  CHECK(name_of(round_trip(s.address(), "hello")) == "web");
  // Without the file the same ack gets BID (what the file prevents).
  running_server forgetful(quiet_options());
  std::string reply = admin_exchange(forgetful.srv.admin_endpoint().to_string(), {ack}, ack.size() + 1);
  CHECK(reply.find("BID:" + id + ":") != std::string::npos);
}

TEST_CASE("state file: every version a reader finds is whole, and it follows each change") {
  temporary_file file;
  harmony::server_options o = quiet_options();
  o.state_file = file.path;
  running_server s(o);
  std::string admin = s.srv.admin_endpoint().to_string();
  std::atomic<bool> done{false};
  std::atomic<int> reads{0}, broken{0};
  std::thread reader;
  struct joined {  // also when a REQUIRE ends the test
    std::atomic<bool>& done;
    std::thread& t;
    ~joined() {
      done = true;
      if (t.joinable()) t.join();
    }
  } join_reader{done, reader};
  reader = std::thread([&] {
    bool written = false;
    while (!done) {
      std::string text;
      if (!file.opened(text) || (text.empty() && !written)) continue;  // none yet; later, empty is broken
      written = true;
      if (!whole_state(text)) ++broken;
      ++reads;
      // Leaves the file closed most of the time: on Windows an open file holds back
      // the rename over it (the writer tries again).
      std::this_thread::sleep_for(1ms);
    }
  });
  // Three batches, each seen in the file before the next: three versions at least,
  // while the reader keeps reading.
  std::vector<std::string> ids;
  for (int batch = 0; batch < 3; ++batch) {
    for (int i = 0; i < 20; ++i)
      ids.push_back(legacy_register(admin, 100 + i, static_cast<std::uint16_t>(20000 + 20 * batch + i)));
    REQUIRE(eventually([&] {
      std::size_t n = 0;
      return whole_state(file.read(), &n) && n == ids.size();
    }));
  }
  int seen = reads;
  REQUIRE(eventually([&] { return reads > seen; }));
  done = true;
  reader.join();
  CHECK(reads > 0);
  CHECK(broken == 0);
  // A CLOSE removes it from the file too.
  std::string close = "CLOSE:" + ids[0] + ":";
  CHECK(admin_exchange(admin, {close}, close.size()) == close);
  REQUIRE(eventually([&] { return file.read().find(ids[0]) == std::string::npos; }));
  std::size_t left = 0;
  CHECK(whole_state(file.read(), &left));
  CHECK(left == ids.size() - 1);
}

TEST_CASE("state file: a corrupt line is logged by file and line; the server starts with the rest") {
  temporary_file file;
  std::string good = std::string(32, 'A'), also = std::string(32, 'B');
  file.write("harmony-state 1\n"
             "backend id=" + good + " kind=legacy host=127.0.0.1 addr=127.0.0.1 port=9 weight=700 ack=1\n"
             "backend id=" + std::string(32, 'C') + " kind=legacy host=127.0.0.1 port=zz\n"
             "\x01\x02garbage\n"
             "backend id=" + also + " kind=native host=127.0.0.1 addr=127.0.0.1 port=10 weight=5\n");  // no end line
  harmony::server_options o = quiet_options();
  o.state_file = file.path;
  log_capture log;
  log.attach(o);
  running_server s(o);
  INFO(log.all());
  CHECK(log.has("state file " + file.path + " line 3: port 'zz'"));
  CHECK(log.has("state file " + file.path + " line 4: unknown line"));
  CHECK(log.has("no end line"));
  CHECK(log.has("2 backends restored (the file is incomplete)"));
  auto list = s.srv.backends();
  REQUIRE(find(list, good));
  CHECK(find(list, good)->weight == 700);
  CHECK(find(list, good)->state == "expired");  // its last ack was in 1970
  REQUIRE(find(list, also));
  CHECK(find(list, also)->state == "offline");  // until its agent registers again
  s.srv.stop();
  // Rewritten whole at the stop.
  std::size_t kept = 0;
  CHECK(whole_state(file.read(), &kept));
  CHECK(kept == 2);

  // A file that is not one at all, and one that cannot be read: logged, an empty start.
  file.write(std::string("\0\0\0binary", 9));
  harmony::server_options o2 = quiet_options();
  o2.state_file = file.path;
  log_capture log2;
  log2.attach(o2);
  running_server s2(o2);
  CHECK(log2.has("state file " + file.path + " line 1: not a harmony state file"));
  CHECK(s2.srv.backends().empty());
  harmony::server_options o3 = quiet_options();
  o3.state_file = (std::filesystem::temp_directory_path() / "harmony-no-such-dir" / "state").string();
  log_capture log3;
  log3.attach(o3);
  running_server s3(o3);
  CHECK(log3.has("does not exist yet"));
  s3.srv.stop();
  CHECK(log3.has("cannot write the state file " + o3.state_file));
}
