// subprocess/detail/deadline.hpp - saturating time arithmetic. Not public API.
//
// Every duration or deadline a caller hands the library goes through here, so that
// anything up to its type's maximum (milliseconds::max(), hours::max(),
// nanoseconds::max(), time_point::max(), a system_clock time far in the future, a
// floating-point or odd-period duration) means "practically forever": no signed
// overflow (undefined behaviour, in practice a wrap into the past and a wait that
// times out at once), and no early return.
//
//   to_clock_duration(d)   d as steady_clock::duration, clamped to its range, rounded up
//   deadline_in(d)         now() + d, clamped to time_point::max()
//   to_deadline(t)         a time point of any clock as a steady_clock deadline
//   poll_timeout(dl)       int milliseconds for poll()/epoll_wait(): rounded up, capped
//                          (callers loop until the deadline has really passed)
//   to_timespec(d)         for sigtimedwait()/timerfd, tv_sec saturated
//
// Negative durations are not decided here: each API keeps its own rule (most reject
// them with an argument_error naming the setting; a negative d here is "now").
#pragma once

#include <chrono>
#include <ctime>
#include <optional>
#include <type_traits>

namespace subprocess::detail {

using clock = std::chrono::steady_clock;
// No value: no deadline (wait for ever).
using deadline = std::optional<clock::time_point>;

// d in To's units, rounded towards +infinity, clamped to [To::min(), To::max()];
// a NaN is zero. Computed through long double (64-bit mantissa on x86-64, 113 on
// aarch64: every int64 is exact), so no intermediate product can overflow.
template <class To, class Rep, class Period>
constexpr To saturating_ceil(std::chrono::duration<Rep, Period> d) noexcept {
  using wide = std::chrono::duration<long double, typename To::period>;
  const long double x = std::chrono::duration_cast<wide>(d).count();
  if (!(x == x)) return To::zero();
  if constexpr (std::is_floating_point_v<typename To::rep>) {
    return To(static_cast<typename To::rep>(x));
  } else {
    constexpr auto hi = static_cast<long double>(To::max().count());
    constexpr auto lo = static_cast<long double>(To::min().count());
    if (x >= hi) return To::max();
    if (x <= lo) return To::min();
    auto r = static_cast<typename To::rep>(x);  // toward zero; in range
    if (static_cast<long double>(r) < x) ++r;   // up: a wait never ends early
    return To(r);
  }
}

template <class Rep, class Period>
constexpr clock::duration to_clock_duration(std::chrono::duration<Rep, Period> d) noexcept {
  return saturating_ceil<clock::duration>(d);
}

constexpr clock::time_point saturating_add(clock::time_point t, clock::duration d) noexcept {
  if (d > d.zero() && t > clock::time_point::max() - d) return clock::time_point::max();
  if (d < d.zero() && t < clock::time_point::min() - d) return clock::time_point::min();
  return t + d;
}

constexpr clock::duration saturating_sub(clock::duration a, clock::duration b) noexcept {
  if (b < b.zero() && a > clock::duration::max() + b) return clock::duration::max();
  if (b > b.zero() && a < clock::duration::min() + b) return clock::duration::min();
  return a - b;
}

// How long from now until t; negative once t has passed. Saturated.
inline clock::duration time_left(clock::time_point t, clock::time_point now = clock::now()) noexcept {
  return saturating_sub(t.time_since_epoch(), now.time_since_epoch());
}

// The deadline d from now (a negative d is now).
template <class Rep, class Period>
clock::time_point deadline_in(std::chrono::duration<Rep, Period> d) {
  const clock::time_point now = clock::now();
  const clock::duration dd = to_clock_duration(d);
  return saturating_add(now, dd < dd.zero() ? clock::duration::zero() : dd);
}
template <class Rep, class Period>
deadline deadline_in(const std::optional<std::chrono::duration<Rep, Period>>& d) {
  if (!d) return std::nullopt;
  return deadline_in(*d);
}

// A time point of any clock as a steady_clock deadline. For another clock it is the
// time left until t, measured now (a later change of that clock is not followed);
// that clock's time_point::max() stays time_point::max().
template <class Clock, class Duration>
clock::time_point to_deadline(const std::chrono::time_point<Clock, Duration>& t) {
  if (t == std::chrono::time_point<Clock, Duration>::max()) return clock::time_point::max();
  if constexpr (std::is_same_v<Clock, clock>) {
    return clock::time_point(to_clock_duration(t.time_since_epoch()));
  } else {
    const auto there = to_clock_duration(t.time_since_epoch());
    const auto here = to_clock_duration(Clock::now().time_since_epoch());
    return saturating_add(clock::now(), saturating_sub(there, here));
  }
}

// "Practically forever" for a setting that is kept and later added to time points or
// compared with differences of them (pool and heartbeat options): a quarter of
// steady_clock's range, about 73 years, so that now() + it and it * 4 cannot
// overflow. clamp_forever(d) is min(d, that), in d's own type.
template <class Rep, class Period>
constexpr std::chrono::duration<Rep, Period> clamp_forever(std::chrono::duration<Rep, Period> d) noexcept {
  using D = std::chrono::duration<Rep, Period>;
  constexpr D cap = std::chrono::duration_cast<D>(clock::duration::max() / 4);
  return d > cap ? cap : d;
}

// The longest single poll()/epoll_wait() (about 11.6 days); a longer wait loops.
inline constexpr int max_poll_ms = 1'000'000'000;

// Milliseconds to give poll() for a deadline: -1 for none, 0 once it has passed,
// rounded up so a poll never returns before the deadline, capped at max_poll_ms:
// a caller must look at the clock before treating a 0 from poll() as the deadline.
inline int poll_timeout(const deadline& dl) {
  if (!dl) return -1;
  const clock::duration left = time_left(*dl);
  if (left <= clock::duration::zero()) return 0;
  const auto ms = saturating_ceil<std::chrono::milliseconds>(left).count();
  return ms > max_poll_ms ? max_poll_ms : static_cast<int>(ms);
}

// d as a timespec (negative: zero), tv_sec saturated.
inline timespec to_timespec(clock::duration d) noexcept {
  if (d <= d.zero()) return timespec{0, 0};
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(d);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(s.count());  // time_t is 64-bit: every int64 seconds fits
  ts.tv_nsec = static_cast<long>((d - s).count());
  return ts;
}

}  // namespace subprocess::detail
