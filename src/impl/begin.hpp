#if defined(HARMONY_IMPLEMENTATION) || defined(HARMONY_HEADER_ONLY)
#ifndef HARMONY_IMPLEMENTATION_INCLUDED
#define HARMONY_IMPLEMENTATION_INCLUDED
// ============================================================================
// IMPLEMENTATION
// ============================================================================
#if defined(HARMONY_HEADER_ONLY)
#define HARMONY_DEF inline
#else
#define HARMONY_DEF
#endif

#if (defined(HARMONY_USE_EPOLL) + defined(HARMONY_USE_POLL) + defined(HARMONY_USE_IOCP)) > 1
#error "harmony: define at most one of HARMONY_USE_EPOLL, HARMONY_USE_POLL, HARMONY_USE_IOCP"
#endif
#if !defined(HARMONY_USE_EPOLL) && !defined(HARMONY_USE_POLL) && !defined(HARMONY_USE_IOCP)
#if defined(_WIN32)
#define HARMONY_USE_IOCP
#elif defined(__linux__)
#define HARMONY_USE_EPOLL
#else
#define HARMONY_USE_POLL
#endif
#endif
#if defined(HARMONY_USE_EPOLL) && !defined(__linux__)
#error "harmony: HARMONY_USE_EPOLL needs Linux"
#endif
#if defined(HARMONY_USE_IOCP) != defined(_WIN32)
#error "harmony: IOCP is the Windows backend and the only one there"
#endif
