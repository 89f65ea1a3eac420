namespace harmony {
namespace detail {

// >>engine  the contract every engine implements: poller, connection, acceptor
// An engine is chosen at compile time (>>config) and provides, in its own parts:
//
//   io_handler   what the poller delivers to: on_io(events) on readiness engines,
//                on_complete(operation) on the completion engine; `retired` once
//                closed, so that events already dequeued for it are dropped.
//   poller       open(); add(socket, handler, interest); interest(...); remove(socket);
//                wait(timeout_ms, woke, released) dispatching to handlers; wake() from
//                any thread; settle() before the memory of handlers is freed;
//                defer_release(handler, release): true when the release must wait for
//                operations still in flight.
//   connection   one socket on one loop, the only thing that reads and writes a
//                socket: adopt / connect, read when readable, write with completion,
//                shutdown_send once writes drained, close; it reports to a
//                connection_owner. Every socket user (the admin port, the agent, the
//                proxy pump) is built on it.
//   acceptor     a listening socket handing over accepted sockets.
//
// The readiness engines (epoll, poll) share one connection and one acceptor
// (>>readiness); IOCP has its own (>>iocp). Nothing outside the engine parts
// knows which engine it runs on.
enum : unsigned { io_read = 1, io_write = 2, io_error = 4, io_peer_closed = 8 };

struct timer {
  std::int64_t deadline = 0;
  std::size_t index = static_cast<std::size_t>(-1);
  std::function<void()> fire;
  bool armed() const noexcept { return index != static_cast<std::size_t>(-1); }
};

class connection;

// What a connection tells its owner. Each call may close the connection (and
// ask for the owner's release); the connection checks before it goes on.
struct connection_owner {
  // A connect() that returned `pending` has finished: connected, or the error.
  virtual void on_connected(connection& c, std::error_code error) = 0;
  // read() may now return bytes, the end of the stream or an error. Called only
  // while the owner wants to read (want_read).
  virtual void on_readable(connection& c) = 0;
  // A write() that returned `pending` has finished: `bytes` more were written
  // since write() returned, or the error that ended it.
  virtual void on_written(connection& c, std::size_t bytes, std::error_code error) = 0;

 protected:
  ~connection_owner() = default;
};

enum class io_status {
  done,     // finished now
  pending,  // goes on; the owner hears of the end (on_connected / on_written)
  failed,   // the error is in the error_code given
};

// The result of connection::read: bytes (> 0), the end of the stream (0), or
// nothing for now (-1 with no error) / a failure (-1 with the error set).
using read_result = std::ptrdiff_t;

}  // namespace detail
}  // namespace harmony
