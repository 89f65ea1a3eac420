// SPDX-License-Identifier: MIT
// harmony.hpp - a smart TCP load balancer in one header.
// Copyright (c) 2026 the Harmony authors. Licence text at the end of this file.
// Assembled from the parts in src/ by tools/assemble: edit those, not this file.
//
// Backends register over an admin port and ack that they are alive; every client
// connection is proxied to a backend chosen by weight and load, with persistence,
// a concurrency cap with a wait queue, requeue on failure and an "unavailable"
// reply when nobody can serve. A native re-creation of harmony.js (2014).
//
// CONTENTS (grep for the anchor)
// @CONTENTS@
//
// >>config  configuration macros
//   HARMONY_IMPLEMENTATION  define in exactly one translation unit before including this
//                           header: that unit compiles the implementation (and includes
//                           the OS socket headers); every other unit sees declarations only.
//   HARMONY_HEADER_ONLY     define (globally) to compile the implementation, as inline
//                           functions, in every unit that includes the header.
//   HARMONY_USE_EPOLL, HARMONY_USE_POLL, HARMONY_USE_IOCP
//                           force one reactor backend (implementation unit only). The
//                           default is epoll on Linux, IOCP on Windows, poll elsewhere;
//                           HARMONY_USE_POLL on Linux selects the portable poll(2) backend.
//   HARMONY_DEFAULT_BUFFER_BYTES       relay buffer per direction (default 16384).
//   HARMONY_DEFAULT_BULK_BUFFER_BYTES  relay buffer of a streaming direction (default 262144).
//
// Windows: link ws2_32 and mswsock (MSVC takes them from this header), and with MinGW
// link -static or ship libwinpthread-1.dll. Only the implementation unit includes
// <windows.h>, before or after the program's own.
//
// Thread-safety: every public member function of harmony::server and harmony::client
// may be called from any thread. Callbacks run on the object's own event-loop thread.
// The library throws no exceptions and works with -fno-exceptions.

#ifndef HARMONY_HPP
#define HARMONY_HPP
