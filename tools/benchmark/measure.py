"""Timing and peak memory of competing calls, on a CPU or a CUDA device."""

import contextlib
import ctypes
import gc
import statistics
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# glibc's mallopt parameter number.
M_MMAP_THRESHOLD = -3


class PeakMemory:
    """Peak memory of one call above the memory in use before it, in bytes (None if unknown).

    On a CPU: the peak resident set size (VmHWM, reset through /proc/self/clear_refs). glibc
    serves large allocations from its heap, where freed tensors stay resident and are reused
    unevenly, so the peak RSS would add heap fragmentation to the tensors' peak. Created before
    any model, this object therefore has glibc mmap every allocation of 64 KiB or more for the
    whole run: freed tensors leave the RSS at once (the page faults this costs are about 1% of
    a step here).
    """

    def __init__(self, device):
        self.device = device
        self._libc = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above memory_allocated before the call"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status("VmHWM")
        except (OSError, KeyError):
            self.method = None  # not Linux, or /proc/self/clear_refs is not writable
            return
        self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs) above the RSS before the call"
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            if libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1:
                self._libc = libc
                self.method += "; glibc mmaps allocations >= 64 KiB (mallopt), so the RSS tracks live memory"

    def __call__(self, fn):
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            result = fn()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base, result
        if self.method is None:
            return None, fn()
        if self._libc is not None:
            self._libc.malloc_trim(0)  # small freed blocks leave the RSS before the baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status("VmRSS")
        result = fn()
        return _status("VmHWM") - base, result


def timed(fn, device):
    """Seconds of one call; a callable may return its own measured seconds (e.g. excluding set-up)."""
    sync(device)
    start = time.perf_counter()
    own = fn()
    sync(device)
    return own if isinstance(own, float) else time.perf_counter() - start


def round_robin(fns, args, device, peak):
    """Time competing callables in turns: `warmup` untimed rounds, then `repeats` timed rounds,
    each in a rotated order; the first timed round also measures peak memory (after the
    warm-up, so one-time allocations of a first call are not counted). A callable that runs out
    of device memory is marked `oom` and left out from then on."""
    out = {name: {"peak_bytes": None, "times_s": [], "oom": False} for name in fns}
    live = dict(fns)

    def call(name, how):
        try:
            return how()
        except torch.OutOfMemoryError:
            out[name]["oom"] = True
            del live[name]
        # Outside the except block: its traceback no longer holds the failed call's tensors.
        gc.collect()
        torch.cuda.empty_cache()
        return None

    for _ in range(args.warmup):
        for name, fn in list(live.items()):
            call(name, fn)
    for r in range(args.repeats):
        names = list(live)
        for name in names[r % max(len(names), 1) :] + names[: r % max(len(names), 1)]:
            if name not in live:
                continue
            fn = live[name]
            if r == 0:
                res = call(name, lambda fn=fn: peak(lambda: timed(fn, device)))
                if res is not None:
                    out[name]["peak_bytes"], seconds = res
            else:
                seconds = call(name, lambda fn=fn: timed(fn, device))
            if name in live:
                out[name]["times_s"].append(seconds)
    for res in out.values():
        res["median_s"] = statistics.median(res["times_s"]) if res["times_s"] else None
        # The least disturbed call: on a shared machine other processes only ever add time.
        res["min_s"] = min(res["times_s"]) if res["times_s"] else None
    return out
