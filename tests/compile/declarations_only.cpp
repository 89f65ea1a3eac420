// The public half names no OS type and includes no OS socket header.
#include "../../harmony.hpp"
#if defined(AF_INET) || defined(EPOLLIN) || defined(POLLIN) || defined(_WINSOCKAPI_) || defined(SOCKET_ERROR)
#error "harmony.hpp leaked OS socket headers into a declarations-only unit"
#endif
#if defined(HARMONY_USE_EPOLL) || defined(HARMONY_USE_POLL) || defined(HARMONY_USE_IOCP) || defined(HARMONY_DEF)
#error "harmony.hpp leaked implementation macros into a declarations-only unit"
#endif
harmony::server* make() { return new harmony::server(harmony::server_options{}); }
