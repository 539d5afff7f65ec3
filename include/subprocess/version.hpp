// subprocess/version.hpp - the library's version, for the preprocessor and for code.
//
//   ```cpp
//   static_assert(SUBPROCESS_VERSION >= 200, "needs subprocess 0.2 or later");
//   std::cout << SUBPROCESS_VERSION_STRING << '\n';   // "0.2.0"
//   ```
//
// The one place the version is written: CMakeLists.txt reads it from here, and the
// installed CMake package and pkg-config file carry the same number.
#pragma once

#define SUBPROCESS_VERSION_MAJOR 0
#define SUBPROCESS_VERSION_MINOR 2
#define SUBPROCESS_VERSION_PATCH 0
#define SUBPROCESS_VERSION_STRING "0.2.0"
// MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons.
#define SUBPROCESS_VERSION \
  (SUBPROCESS_VERSION_MAJOR * 10000 + SUBPROCESS_VERSION_MINOR * 100 + SUBPROCESS_VERSION_PATCH)
