// subprocess/detail/pages.hpp - advice to the kernel about ranges of memory. Not
// public API.
//
// Every page written for the first time is a page fault; taken one by one from user
// space (a memcpy into fresh memory) they cost more than the copy itself. Making a
// range present with one madvise(MADV_POPULATE_WRITE) first is cheaper (run()'s
// capture of big outputs, the ipc parser's big strings).
#pragma once

#include <cstddef>
#include <cstdint>

#include <sys/mman.h>
#include <unistd.h>

#include "syscall.hpp"

namespace subprocess::detail {

// Whole pages inside [p, p + n): given back to the kernel (they read as zeros
// after), or made present before we write them.
inline void advise_pages(char* p, std::size_t n, int advice) noexcept {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
  auto hi = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(page - 1);
  if (hi > lo) sys::madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
}
inline void populate_pages(char* p, std::size_t n) noexcept {
#if defined(MADV_POPULATE_WRITE)
  advise_pages(p, n, MADV_POPULATE_WRITE);  // Linux >= 5.14; elsewhere EINVAL, and we fault
#else
  (void)p, (void)n;
#endif
}

}  // namespace subprocess::detail
