namespace harmony {

// >>errors  harmony::errc, error category
// One list gives the enumerators and their messages.
#define HARMONY_ERRORS(X)                                                                  \
  X(bad_address, "malformed address (expected HOST:PORT or [IPv6]:PORT)")                  \
  X(resolve_failed, "cannot resolve host name")                                            \
  X(bad_option, "invalid option value")                                                    \
  X(bad_duration, "malformed duration (expected e.g. 500ms, 30s, 1m, 2h)")                 \
  X(unknown_backend, "unknown backend id")                                                 \
  X(too_many_backends, "backend limit reached")                                            \
  X(no_backend, "no eligible backend")                                                     \
  X(attempts_exhausted, "every backend attempt failed")                                    \
  X(queue_full, "wait queue is full")                                                      \
  X(queue_timeout, "timed out in the wait queue")                                          \
  X(connect_timeout, "backend connect timed out")                                          \
  X(backend_reset, "backend closed the connection before any byte")                        \
  X(already_running, "already running")                                                    \
  X(not_running, "not running")                                                            \
  X(shutting_down, "shutting down")                                                        \
  X(protocol, "malformed admin message")                                                   \
  X(unauthorized, "authentication required or failed")

enum class errc : int {
  ok = 0,
#define HARMONY_ENUM_ITEM(name, text) name,
  HARMONY_ERRORS(HARMONY_ENUM_ITEM)
#undef HARMONY_ENUM_ITEM
};

const std::error_category& error_category() noexcept;
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

}  // namespace harmony

template <>
struct std::is_error_code_enum<harmony::errc> : std::true_type {};
