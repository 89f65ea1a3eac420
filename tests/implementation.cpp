// The library's implementation for a socket test program, compiled once per
// reactor backend (HARMONY_USE_* from the command line): the only unit of that
// program that sees the backend choice.
#define HARMONY_IMPLEMENTATION
#include "../harmony.hpp"
