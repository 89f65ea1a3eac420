namespace harmony {

// >>admin-call  harmony::admin_command: one operator command, handshake included
// What `harmonyd ctl` runs: a reactor of its own on the calling thread, one stream,
// the native dialect's hello, the proof when the balancer asks for one, the command,
// and its reply up to the final "ok"/"err" line.
HARMONY_DEF std::string admin_proof(std::string_view secret, std::string_view nonce) {
  return detail::admin_auth_proof(secret, nonce);
}

HARMONY_DEF std::error_code admin_command(std::string_view admin, std::string_view command, std::string* reply,
                                          std::string_view secret, duration timeout) {
  if (reply) reply->clear();
  if (command.find_first_of("\r\n") != std::string_view::npos || timeout.count() <= 0)
    return make_error_code(errc::bad_option);
  endpoint at;
  detail::address to;
  if (auto e = parse_endpoint(admin, at)) return e;
  if (auto e = detail::resolve(at, to, false)) return e;
  detail::reactor loop;
  if (auto e = loop.open()) return e;
  enum class step { hello, proof, reply, done };
  step now = step::hello;
  std::error_code result;
  std::string text;
  detail::stream io(loop);
  detail::line_splitter lines{65536};
  detail::timer give_up;
  auto finish = [&](std::error_code e) {
    if (now == step::done) return;
    now = step::done;
    result = e;
    io.close();
    loop.stop();
  };
  auto on_line = [&](std::string_view line) {
    if (now == step::done) return;
    detail::command_line c = detail::parse_command(line);
    if (now == step::hello) {
      std::string_view nonce;
      if (c.verb != "ok" || c.args.empty() || c.args[0] != "harmony/1") {
        text.append(line.data(), line.size()).append("\n");
        return finish(make_error_code(errc::protocol));
      }
      bool asked = c.option("nonce", nonce);
      if (asked && !secret.empty()) io.write("auth " + detail::admin_auth_proof(secret, nonce) + "\n");
      io.write(std::string(command) + "\n");
      now = asked && !secret.empty() ? step::proof : step::reply;
      return;
    }
    if (now == step::proof) {
      if (c.verb == "ok") {
        now = step::reply;
        return;
      }
      text.append(line.data(), line.size()).append("\n");
      return finish(make_error_code(errc::unauthorized));
    }
    text.append(line.data(), line.size()).append("\n");
    if (c.verb == "ok" || c.verb == "pong") return finish({});
    if (c.verb == "err") {
      bool auth = !c.args.empty() && c.args[0].substr(0, 5) == "auth-";
      return finish(make_error_code(auth ? errc::unauthorized : errc::protocol));
    }
  };
  give_up.fire = [&] { finish(make_error_code(std::errc::timed_out)); };
  io.on_connect = [&](std::error_code e) {
    if (e) return finish(e);
    io.write("hello harmony/1\n");
  };
  io.on_close = [&](std::error_code e) { finish(e ? e : make_error_code(errc::protocol)); };
  io.on_data = [&](std::string_view bytes) {
    if (!lines.feed(bytes, on_line)) finish(make_error_code(errc::protocol));
  };
  loop.schedule(give_up, detail::now_ms() + timeout.count());
  if (auto e = io.connect(to)) finish(e);
  if (now != step::done) loop.run();
  loop.cancel(give_up);
  io.close();
  loop.settle();
  if (reply) *reply = std::move(text);
  return result;
}

}  // namespace harmony
