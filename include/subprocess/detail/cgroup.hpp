// subprocess/detail/cgroup.hpp - files of cgroup v2 and /proc, for tree.hpp. Not public API.
//
// Small whole-file reads and writes (every call through sys::), where this process's
// cgroup v2 directory is, and a scan of /proc for parent links (subreaper mode).
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>

#include "syscall.hpp"
#include "unique_fd.hpp"

namespace subprocess::detail::cgroup {

// Reads all of fd from offset 0 (a cgroup file is regenerated on every read from
// 0). False with errno set on failure.
inline bool read_fd(int fd, std::string& out) {
  out.clear();
  char buf[4096];
  for (off_t off = 0;;) {
    ssize_t n = sys::pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out.append(buf, static_cast<std::size_t>(n));
    off += n;
  }
}
inline bool read_file(const std::string& path, std::string& out) {
  unique_fd fd(sys::no_eintr([&] { return sys::open(path.c_str(), O_RDONLY); }));
  return fd && read_fd(fd.get(), out);
}
// Writes `text` in one write (a cgroup file takes one value per write). 0 or the errno.
inline int write_file(const std::string& path, std::string_view text) {
  unique_fd fd(sys::no_eintr([&] { return sys::open(path.c_str(), O_WRONLY); }));
  if (!fd) return errno;
  ssize_t n = sys::no_eintr([&] { return sys::write(fd.get(), text.data(), text.size()); });
  return n < 0 ? errno : 0;
}

// The value after "key " on a line of a flat-keyed file (cgroup.events, cpu.stat);
// -1 when the key is absent.
inline long long field(std::string_view text, std::string_view key) {
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ')
      return std::strtoll(std::string(line.substr(key.size() + 1)).c_str(), nullptr, 10);
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return -1;
}

// Is `word` one of the space-separated words of `list` (cgroup.controllers)?
inline bool has_word(std::string_view list, std::string_view word) {
  for (std::size_t pos = 0; pos <= list.size();) {
    std::size_t end = list.find_first_of(" \n", pos);
    if (end == std::string_view::npos) end = list.size();
    if (list.substr(pos, end - pos) == word) return true;
    pos = end + 1;
  }
  return false;
}

// One pid per line (cgroup.procs).
inline std::vector<pid_t> parse_pids(std::string_view text) {
  std::vector<pid_t> v;
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    if (nl > pos)
      v.push_back(static_cast<pid_t>(
          std::strtol(std::string(text.substr(pos, nl - pos)).c_str(), nullptr, 10)));
    pos = nl + 1;
  }
  return v;
}

// This process's cgroup v2 directory: the cgroup2 mount (from /proc/self/mountinfo)
// plus the "0::/path" line of /proc/self/cgroup. "" with `why` set when there is none.
inline std::string own_dir(std::string& why) {
  std::string text;
  if (!read_file("/proc/self/cgroup", text)) {
    why = "cannot read /proc/self/cgroup (" + std::string(std::strerror(errno)) + ")";
    return {};
  }
  std::string rel;
  bool found = false;
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    if (text.compare(pos, 3, "0::") == 0) {
      rel = text.substr(pos + 3, nl - pos - 3);
      found = true;
    }
    pos = nl + 1;
  }
  if (!found) {
    why = "this process is in no cgroup v2 hierarchy (no \"0::\" line in /proc/self/cgroup)";
    return {};
  }
  if (!read_file("/proc/self/mountinfo", text)) {
    why = "cannot read /proc/self/mountinfo (" + std::string(std::strerror(errno)) + ")";
    return {};
  }
  // "36 25 0:31 / /sys/fs/cgroup/unified rw,... shared:10 - cgroup2 cgroup2 rw"
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    std::size_t dash = line.find(" - ");
    if (dash != std::string_view::npos && line.substr(dash + 3, 8) == "cgroup2 ") {
      std::size_t f = 0;
      for (int i = 0; i < 4 && f != std::string_view::npos; ++i) f = line.find(' ', f + 1);
      if (f != std::string_view::npos) {
        std::size_t e = line.find(' ', f + 1);
        std::string mount(line.substr(f + 1, e - f - 1));
        return rel == "/" ? mount : mount + rel;
      }
    }
    pos = nl + 1;
  }
  why = "no cgroup2 file system is mounted (see /proc/self/mountinfo)";
  return {};
}

// One line of the /proc scan.
struct proc_entry {
  pid_t pid;
  pid_t ppid;
  char state;  // 'Z': a zombie
};

// Every process's parent and state, from /proc/<pid>/stat. False when /proc cannot
// be read to the end (errno set).
inline bool scan_proc(std::vector<proc_entry>& out) {
  out.clear();
  DIR* proc;
  while ((proc = sys::opendir("/proc")) == nullptr && errno == EINTR) {
  }
  if (proc == nullptr) return false;
  struct closer {
    DIR* d;
    ~closer() { sys::closedir(d); }
  } close_proc{proc};
  char path[sizeof "/proc//stat" + sizeof(dirent::d_name)];
  char buf[512];
  for (;;) {
    errno = 0;
    dirent* e = sys::readdir(proc);
    if (e == nullptr) {
      if (errno == EINTR) continue;
      return errno == 0;
    }
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    std::snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    unique_fd fd(sys::no_eintr([&] { return sys::open(path, O_RDONLY); }));
    if (!fd) continue;  // it went away meanwhile
    ssize_t n = sys::no_eintr([&] { return sys::read(fd.get(), buf, sizeof buf - 1); });
    if (n <= 0) continue;
    buf[n] = '\0';
    // "pid (comm) S ppid ...": comm may contain anything, so parse after the last ')'.
    const char* rp = std::strrchr(buf, ')');
    if (rp == nullptr || rp[1] != ' ') continue;
    out.push_back({static_cast<pid_t>(std::strtol(e->d_name, nullptr, 10)),
                   static_cast<pid_t>(std::strtol(rp + 3, nullptr, 10)), rp[2]});
  }
}

// Does /proc/<pid>/environ hold the entry `entry` ("NAME=value")? False for a
// zombie (no environment left) or a process we may not read.
inline bool environ_has(pid_t pid, std::string_view entry) {
  std::string text;
  if (!read_file("/proc/" + std::to_string(pid) + "/environ", text)) return false;
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t end = text.find('\0', pos);
    if (end == std::string::npos) end = text.size();
    if (std::string_view(text).substr(pos, end - pos) == entry) return true;
    pos = end + 1;
  }
  return false;
}

}  // namespace subprocess::detail::cgroup
