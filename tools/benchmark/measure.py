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


def available_bytes(device):
    """Memory a call may still take: CUDA's free memory, else the kernel's MemAvailable (None if
    unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, KeyError, ValueError), open("/proc/meminfo") as f:
        return int(next(line.split()[1] for line in f if line.startswith("MemAvailable:"))) * 1024
    return None


# Share of the available memory a call's estimate may take before it is skipped on a CPU, where
# running out of memory ends the process (or another one) instead of raising an error.
CPU_MEMORY_SHARE = 0.6


def too_large(estimate, device):
    """Why a call estimated to need `estimate` bytes is not run on this device, or None."""
    if device.type == "cuda" or estimate is None:
        return None  # CUDA raises OutOfMemoryError, which round_robin records
    free = available_bytes(device)
    if free is None or estimate <= CPU_MEMORY_SHARE * free:
        return None
    return (
        f"estimated {estimate / 2**30:.1f} GiB > {CPU_MEMORY_SHARE:.0%} of {free / 2**30:.1f} GiB available"
    )


def timed(fn, device):
    """Seconds of one call; a callable may return its own measured seconds (e.g. excluding set-up)."""
    sync(device)
    start = time.perf_counter()
    own = fn()
    sync(device)
    return own if isinstance(own, float) else time.perf_counter() - start


def round_robin(fns, args, device, peak, estimates=None):
    """Time competing callables in turns: `warmup` untimed rounds, then `repeats` timed rounds,
    each in a rotated order; the first timed round also measures peak memory (after the
    warm-up, so one-time allocations of a first call are not counted). A callable that runs out
    of device memory is marked `oom` and left out from then on; one whose estimated memory
    (`estimates`: name -> bytes) is `too_large` is not run and marked `skipped`."""
    out = {name: {"peak_bytes": None, "times_s": [], "oom": False, "skipped": None} for name in fns}
    for name, estimate in (estimates or {}).items():
        out[name]["skipped"] = too_large(estimate, device)
    calls = _Calls({name: fn for name, fn in fns.items() if not out[name]["skipped"]}, out)
    for _ in range(args.warmup):
        for name in list(calls.live):
            calls.run(name, calls.live[name])
    for r in range(args.repeats):
        for name in rotated(list(calls.live), r):
            if name not in calls.live:
                continue
            fn = calls.live[name]
            if r == 0:
                res = calls.run(name, lambda fn=fn: peak(lambda: timed(fn, device)))
                seconds = None if res is None else res[1]
                out[name]["peak_bytes"] = None if res is None else res[0]
            else:
                seconds = calls.run(name, lambda fn=fn: timed(fn, device))
            if name in calls.live:
                out[name]["times_s"].append(seconds)
    for res in out.values():
        summarise(res)
    return out


class _Calls:
    """The callables still running; one that runs out of device memory is marked and dropped."""

    def __init__(self, live, out):
        self.live = live
        self.out = out

    def run(self, name, how):
        try:
            return how()
        except torch.OutOfMemoryError:
            self.out[name]["oom"] = True
            del self.live[name]
        # Outside the except block: its traceback no longer holds the failed call's tensors.
        gc.collect()
        torch.cuda.empty_cache()
        return None


def rotated(names, r):
    shift = r % max(len(names), 1)
    return names[shift:] + names[:shift]


def summarise(res):
    """The median of a call's times and the fastest one (the least disturbed: on a shared
    machine other processes only ever add time); None without times."""
    times = res["times_s"]
    res["median_s"] = statistics.median(times) if times else None
    res["min_s"] = min(times) if times else None
