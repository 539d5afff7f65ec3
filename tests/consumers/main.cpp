// A consumer of the library: runs a command and checks what it printed, and that the
// version macros agree with the version the build system reported.
#include <subprocess/subprocess.hpp>

#include <cstdio>
#include <cstring>

#ifndef EXPECTED_VERSION
#error "build with -DEXPECTED_VERSION=\"x.y.z\""
#endif
static_assert(SUBPROCESS_VERSION ==
              SUBPROCESS_VERSION_MAJOR * 10000 + SUBPROCESS_VERSION_MINOR * 100 + SUBPROCESS_VERSION_PATCH);

int main() {
  namespace sp = subprocess;
  if (std::strcmp(SUBPROCESS_VERSION_STRING, EXPECTED_VERSION) != 0) {
    std::printf("version.hpp says %s, the build system %s\n", SUBPROCESS_VERSION_STRING, EXPECTED_VERSION);
    return 1;
  }
  auto r = sp::run(sp::command{"echo", "consumer ok"});
  std::printf("%s", r.out.c_str());
  return r.status.success() && r.out == "consumer ok\n" ? 0 : 1;
}
