// A consumer of the optional ipc part: one message to a child (itself) and back.
#include <subprocess/ipc.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  namespace ipc = subprocess::ipc;
  if (argc > 1 && std::string(argv[1]) == "--child") {
    auto parent = ipc::connect_to_parent();
    while (auto m = parent.receive()) parent.send({{"echo", *m}});
    return 0;
  }
  auto p = subprocess::command::self({"--child"}).ipc().spawn();
  ipc::channel ch(p);
  ch.send({{"hello", "ipc"}});
  auto reply = ch.receive();
  ch.close();
  bool ok = p.wait().success() && reply && (*reply)["echo"]["hello"] == "ipc";
  std::printf("consumer ipc %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
