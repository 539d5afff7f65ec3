// subprocess/detail/buffer.hpp - a growable byte queue without zero-filling. Not public API.
//
// Data is appended at the back (prepare + commit, so read(2) writes straight
// into it) and consumed from the front. Consumed space is reclaimed by moving the
// unread bytes to the front when that is cheaper than growing.
#pragma once

#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

namespace subprocess::detail {

class byte_buffer {
 public:
  byte_buffer() = default;
  byte_buffer(byte_buffer&& o) noexcept
      : data_(std::move(o.data_)), cap_(std::exchange(o.cap_, 0)),
        begin_(std::exchange(o.begin_, 0)), end_(std::exchange(o.end_, 0)) {}
  byte_buffer& operator=(byte_buffer&& o) noexcept {
    data_ = std::move(o.data_);
    cap_ = std::exchange(o.cap_, 0);
    begin_ = std::exchange(o.begin_, 0);
    end_ = std::exchange(o.end_, 0);
    return *this;
  }

  std::string_view view() const noexcept { return {data_.get() + begin_, end_ - begin_}; }
  std::size_t size() const noexcept { return end_ - begin_; }
  bool empty() const noexcept { return begin_ == end_; }

  // Space for at least n more bytes at the back; write into it, then commit().
  char* prepare(std::size_t n) {
    if (cap_ - end_ >= n) return data_.get() + end_;
    std::size_t live = size();
    if (begin_ > 0 && cap_ - live >= n && live <= cap_ / 2) {
      std::memmove(data_.get(), data_.get() + begin_, live);
    } else {
      std::size_t cap = cap_ ? cap_ : 4096;
      while (cap - live < n) cap *= 2;
      std::unique_ptr<char[]> d(new char[cap]);  // not value-initialised: no zero fill
      if (live) std::memcpy(d.get(), data_.get() + begin_, live);
      data_ = std::move(d);
      cap_ = cap;
    }
    begin_ = 0;
    end_ = live;
    return data_.get() + end_;
  }
  void commit(std::size_t n) noexcept { end_ += n; }
  void append(std::string_view s) {
    std::memcpy(prepare(s.size()), s.data(), s.size());
    commit(s.size());
  }
  void consume(std::size_t n) noexcept {
    begin_ += n;
    if (begin_ >= end_) begin_ = end_ = 0;
  }
  void clear() noexcept { begin_ = end_ = 0; }
  // Frees the memory when a burst is over.
  void shrink() noexcept {
    if (empty()) {
      data_.reset();
      cap_ = 0;
    }
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
};

}  // namespace subprocess::detail
