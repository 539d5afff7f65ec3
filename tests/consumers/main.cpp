// A consumer of the library: runs a command and checks what it printed.
#include <subprocess/subprocess.hpp>

#include <cstdio>

int main() {
  namespace sp = subprocess;
  auto r = sp::run(sp::command{"echo", "consumer ok"});
  std::printf("%s", r.out.c_str());
  return r.status.success() && r.out == "consumer ok\n" ? 0 : 1;
}
