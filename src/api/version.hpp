// >>version  version numbers, size defaults
#define HARMONY_VERSION_MAJOR 0
#define HARMONY_VERSION_MINOR 1
#define HARMONY_VERSION_PATCH 0
#define HARMONY_VERSION (HARMONY_VERSION_MAJOR * 10000 + HARMONY_VERSION_MINOR * 100 + HARMONY_VERSION_PATCH)

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#ifndef HARMONY_DEFAULT_BUFFER_BYTES
#define HARMONY_DEFAULT_BUFFER_BYTES 16384
#endif
#ifndef HARMONY_DEFAULT_BULK_BUFFER_BYTES
#define HARMONY_DEFAULT_BULK_BUFFER_BYTES 262144
#endif
