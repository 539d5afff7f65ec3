#!/usr/bin/env python3
"""Python peer server for subprocess_bench (see tests/bench/bench.hpp for the protocol).

Requests arrive on fd 3, replies leave on fd 4, one line each. Started with
--touch-mib N it first fills N MiB of its own memory, so a "2 GiB parent" is a
2 GiB Python process, as it would be in real life.
"""
import multiprocessing
import os
import re
import subprocess
import sys
import time

REQ_FD, REP_FD = 3, 4


def status_bytes(field):
    with open("/proc/self/status") as f:
        m = re.search(r"^%s:\s+(\d+) kB" % field, f.read(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def spawn_run(iterations, _param):
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        r = subprocess.run(["/bin/true"])
        samples.append(str(time.perf_counter_ns() - t0))
        if r.returncode != 0:
            raise RuntimeError("/bin/true failed")
    return samples


def capture(both):
    def run(iterations, n):
        samples = []
        for _ in range(iterations):
            reset_peak_rss()
            before = status_bytes("VmRSS")
            t0 = time.perf_counter_ns()
            args = ["head", "-c", str(n), "/dev/zero"]
            if both:
                r = subprocess.run(args, capture_output=True)
            else:
                r = subprocess.run(args, stdout=subprocess.PIPE)
            ns = time.perf_counter_ns() - t0
            growth = max(status_bytes("VmHWM") - before, 1)
            got = len(r.stdout)
            del r
            if got != n:
                raise RuntimeError("captured %d bytes, expected %d" % (got, n))
            samples.append("%d:%d" % (ns, growth))
        return samples
    return run


def placement(arg):
    """(parent CPU, child CPU) for "split" (first two CPUs allowed) or "same"."""
    cpus = sorted(os.sched_getaffinity(0))
    if arg == "same":
        return cpus[0], cpus[0]
    if arg == "split":
        if len(cpus) < 2:
            raise Skipped("needs 2 CPUs")
        return cpus[0], cpus[1]
    raise ValueError("unknown placement %r" % arg)


class Skipped(Exception):
    pass


def _echo_child(conn, parent_end, cpu):
    parent_end.close()  # else the parent closing its end would not end this loop
    os.sched_setaffinity(0, {cpu})
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


# multiprocessing.Pipe (a socketpair, pickled messages) with a forked child that
# echoes; a sample is the ns of a batch of `per_batch` round trips.
def ipc_pipe(iterations, per_batch, arg):
    parent_cpu, child_cpu = placement(arg)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {parent_cpu})
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    child = ctx.Process(target=_echo_child, args=(b, a, child_cpu))
    child.start()
    b.close()
    payload = "0123456789abcdef"
    try:
        for i in range(200):
            a.send({"s": i, "p": payload})
            a.recv()
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            for i in range(per_batch):
                a.send({"s": i, "p": payload})
                a.recv()
            samples.append(str(time.perf_counter_ns() - t0))
        return samples
    finally:
        a.close()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
        os.sched_setaffinity(0, old)


def _square(x):
    return x * x


def pool_square(iterations, n):
    # Imported here: the other benchmarks do not pay for it.
    import multiprocessing as mp
    samples = []
    expected = sum(i * i for i in range(n))
    with mp.Pool(2) as pool:
        for _ in pool.imap_unordered(_square, range(1000), chunksize=1):  # warm up
            pass
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            total = sum(pool.imap_unordered(_square, range(n), chunksize=1))
            samples.append(str(time.perf_counter_ns() - t0))
            if total != expected:
                raise RuntimeError("wrong sum of squares")
    return samples


IMPLS = {
    "spawn/run": spawn_run,
    "pool/mp_pool": pool_square,
    "capture/capture_output": capture(True),
    "capture/stdout_pipe": capture(False),
    "ipc/pipe": ipc_pipe,
}


def main():
    touch_mib = 0
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "--touch-mib":
        touch_mib = int(args[1])
    os.set_inheritable(REQ_FD, False)
    os.set_inheritable(REP_FD, False)
    # Fill the memory for real (bytes * n memsets it), in 64 MiB pieces.
    chunk = 64 << 20
    held = [b"\x01" * chunk for _ in range(touch_mib * (1 << 20) // chunk)]
    rest = touch_mib * (1 << 20) - len(held) * chunk
    if rest:
        held.append(b"\x01" * rest)
    rep = os.fdopen(REP_FD, "w", buffering=1)
    rep.write("ready %d Python %s\n" % (os.getpid(), sys.version.split()[0]))
    for line in os.fdopen(REQ_FD, "r"):
        parts = line.split()
        if not parts:
            continue
        key, iterations, param = parts[0], int(parts[1]), int(parts[2])
        args = parts[3:4]  # the row's arg, when it has one
        fn = IMPLS.get(key)
        if fn is None:
            reply = "fail unknown implementation " + key
        else:
            try:
                reply = "ok " + " ".join(fn(iterations, param, *args))
            except Skipped as e:
                reply = "skip %s" % e
            except Exception as e:  # reported to the driver, never hidden
                reply = "fail %s: %s" % (type(e).__name__, e)
        rep.write(reply.replace("\n", " ") + "\n")
    del held


if __name__ == "__main__":
    main()
