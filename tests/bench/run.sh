#!/usr/bin/env bash
# tests/bench/run.sh - build the benchmark suite and run it: one command.
#
#   tests/bench/run.sh              every benchmark (a few minutes); Markdown table on stdout
#   tests/bench/run.sh --smoke      tiny sizes, one round, no timing claims (CI: < 1 minute)
#   tests/bench/run.sh --only spawn,capture     some phases only (spawn, capture, pool)
#
# Builds the subprocess_bench target in Release mode in build-bench/ (override with
# SUBPROCESS_BENCH_BUILD_DIR), then runs it. Build output goes to stderr, so
#   tests/bench/run.sh > table.md
# keeps just the table. Peers (libboost1.81-dev, libuv1-dev, python3, nodejs) that
# are not installed are reported as skipped. Exit status is non-zero if any
# implementation failed (a crash, a wrong byte count), never because of a timing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${SUBPROCESS_BENCH_BUILD_DIR:-$root/build-bench}"
generator=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSUBPROCESS_BUILD_BENCHMARKS=ON -DSUBPROCESS_BUILD_TESTS=OFF \
  -DSUBPROCESS_BUILD_EXAMPLES=OFF -DSUBPROCESS_INSTALL=OFF >&2
# Everything this configuration has: the suite and the profiling drivers.
cmake --build "$build" -j"$(nproc)" >&2
exec "$build/tests/bench/subprocess_bench" "$@"
