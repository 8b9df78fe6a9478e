"""The DETERMINISTIC option: runs that repeat bit for bit, at some cost in speed.

Fixing the seed fixes the random numbers, not the order of floating-point sums: cuDNN picks
(and with `benchmark` times) convolution algorithms per run, some CUDA kernels accumulate with
atomics, and parallel CPU reductions split sums by thread.
"""

import os

import torch


def set_determinism(deterministic, cuda):
    """Apply the DETERMINISTIC config key; returns the settings in effect, for the provenance.

    True: cuDNN deterministic without benchmarking, `torch.use_deterministic_algorithms`
    (deterministic kernels where torch has them, a warning naming each operation that has
    none), the cuBLAS workspace setting those kernels need, and on CPU one intra-op thread.
    False: cuDNN benchmarks its algorithms on CUDA (fastest); results may differ in the last
    bits between runs.
    """
    if deterministic:
        # cuBLAS reads this when it is first used, which happens after this call in train.py.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if not cuda:
            torch.set_num_threads(1)
    elif cuda:
        torch.backends.cudnn.benchmark = True
    return {
        "deterministic": bool(deterministic),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu_threads": torch.get_num_threads(),
    }
