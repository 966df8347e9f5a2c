"""Keep freed memory in the process: a training step frees and re-allocates the same activations."""
from __future__ import annotations

import ctypes
import platform


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next step instead of handing it back to the OS.

    By default glibc serves big blocks with mmap above a threshold that moves with what is freed, and
    trims the top of the heap once enough of it is free; a training step frees and re-allocates the
    same activations, so with some allocation orders every step pays page faults on them again (TSM on
    R50 8x112: ~7,000 faults a step, about 3% of its step time; ``harness bench blocks --default-malloc``).
    Fixed thresholds (mmap only above 32 MiB, the most mallopt takes; trim only above 1 GiB) keep them
    mapped. Values are unchanged, only where memory comes from. Process-wide; False (nothing done) where
    libc is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
