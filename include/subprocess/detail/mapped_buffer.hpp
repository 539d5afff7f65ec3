// subprocess/detail/mapped_buffer.hpp - a byte queue for messages of any size. Not
// public API.
//
// Like byte_buffer (append at the back, consume from the front), made for the ipc
// channel, whose messages may be 100 MiB. A buffer of 1 MiB or more lives in its own
// anonymous mapping instead of the heap: it grows with mremap(), so the kernel moves
// page table entries instead of copying bytes, and no page is faulted in twice (the
// page faults of fresh memory are most of the cost of a big message). Asking for
// transparent huge pages (MADV_HUGEPAGE) was measured too: with the common
// defrag=madvise setting the kernel then compacts memory on fault, which made it
// slower. shrink() gives the memory back when empty.
#pragma once

#include <cstring>
#include <new>
#include <string_view>
#include <utility>

#include "syscall.hpp"
#include "../error.hpp"

namespace subprocess::detail {

class mapped_buffer {
 public:
  mapped_buffer() = default;
  mapped_buffer(mapped_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), cap_(std::exchange(o.cap_, 0)),
        begin_(std::exchange(o.begin_, 0)), end_(std::exchange(o.end_, 0)),
        mapped_(std::exchange(o.mapped_, false)) {}
  mapped_buffer& operator=(mapped_buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
      begin_ = std::exchange(o.begin_, 0);
      end_ = std::exchange(o.end_, 0);
      mapped_ = std::exchange(o.mapped_, false);
    }
    return *this;
  }
  mapped_buffer(const mapped_buffer&) = delete;
  mapped_buffer& operator=(const mapped_buffer&) = delete;
  ~mapped_buffer() { release(); }

  std::string_view view() const noexcept { return {data_ + begin_, end_ - begin_}; }
  std::size_t size() const noexcept { return end_ - begin_; }
  bool empty() const noexcept { return begin_ == end_; }

  // Space for at least n more bytes at the back; write into it, then commit().
  // The common case (room at the back) is inline; making room is not: JSON is
  // written into this buffer a few bytes at a time.
  char* prepare(std::size_t n) {
    if (cap_ - end_ >= n) [[likely]]
      return data_ + end_;
    return make_room(n);
  }
  void commit(std::size_t n) noexcept { end_ += n; }
  // Room for `total` bytes in all (a hint before a big append).
  void reserve(std::size_t total) {
    if (total > size()) prepare(total - size());
  }
  void append(const char* p, std::size_t n) {
    if (n == 0) return;
    std::memcpy(prepare(n), p, n);
    commit(n);
  }
  void append(std::string_view s) { append(s.data(), s.size()); }
  void push_back(char c) {
    *prepare(1) = c;
    commit(1);
  }
  void consume(std::size_t n) noexcept {
    begin_ += n;
    if (begin_ >= end_) begin_ = end_ = 0;
  }
  void clear() noexcept { begin_ = end_ = 0; }
  // Keeps the first n buffered bytes, drops the rest (undoes a failed append).
  void truncate(std::size_t n) noexcept {
    if (n < size()) end_ = begin_ + n;
  }
  // Gives the memory back when nothing is buffered and it is big; a small buffer
  // (64 KiB or less) is kept for the next message.
  void shrink() noexcept {
    if (empty() && cap_ > keep) release();
  }

 private:
  static constexpr std::size_t map_threshold = std::size_t{1} << 20;
  static constexpr std::size_t keep = std::size_t{64} << 10;

  [[gnu::noinline]] char* make_room(std::size_t n) {
    const std::size_t live = size();
    if (begin_ > 0 && cap_ - live >= n && live <= cap_ / 2) {
      std::memmove(data_, data_ + begin_, live);
      begin_ = 0;
      end_ = live;
      return data_ + end_;
    }
    std::size_t cap = cap_ ? cap_ : 256;
    while (cap - live < n) cap *= 2;
    grow(cap, live);
    return data_ + end_;
  }

  void grow(std::size_t cap, std::size_t live) {
    if (cap < map_threshold) {
      char* d = new char[cap];  // not value-initialised: no zero fill
      if (live) std::memcpy(d, data_ + begin_, live);
      release();
      data_ = d;
      cap_ = cap;
    } else if (mapped_) {
      if (begin_ > 0) {
        std::memmove(data_, data_ + begin_, live);
        begin_ = 0;  // now, so that a failed mremap leaves the bytes where view() looks
        end_ = live;
      }
      void* p = sys::mremap(data_, cap_, cap);
      if (p == MAP_FAILED) SUBPROCESS_THROW(std::bad_alloc());
      data_ = static_cast<char*>(p);
      cap_ = cap;
    } else {
      void* p = sys::mmap_anonymous(cap);
      if (p == MAP_FAILED) SUBPROCESS_THROW(std::bad_alloc());
      if (live) std::memcpy(p, data_ + begin_, live);
      release();
      data_ = static_cast<char*>(p);
      cap_ = cap;
      mapped_ = true;
    }
    begin_ = 0;
    end_ = live;
  }
  void release() noexcept {
    if (data_) {
      if (mapped_)
        sys::munmap(data_, cap_);
      else
        delete[] data_;
    }
    data_ = nullptr;
    cap_ = begin_ = end_ = 0;
    mapped_ = false;
  }

  char* data_ = nullptr;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
  bool mapped_ = false;
};

}  // namespace subprocess::detail
