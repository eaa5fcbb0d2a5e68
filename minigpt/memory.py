"""How the process reuses the memory NumPy frees: one setting for the whole package.

A forward pass, a lens and a training step allocate the same large temporary arrays again and
again (a block's attention scores and MLP activations, the (T, V) logits). glibc hands a freed
block over its mmap threshold (128 kB rising to 32 MB) back to the kernel and maps fresh,
zero-filled pages for the next one: one page fault per 4 kB page. That was 13% of a training
step at 8 blocks x 256 wide, and ~4,000 faults (about 30 ms of one core) per gpt2 forward pass
at T = 256. mallopt(M_MMAP_MAX, 0) serves every block from the heap instead, and a high
M_TRIM_THRESHOLD keeps the heap's freed top for the next array: the process keeps its peak
size, which the next pass reaches anyway. The setting is process-wide and applies from the
first call on; other C libraries (macOS, musl) are left as they are.
"""

import ctypes
import functools
import platform


@functools.cache
def keep_freed_memory() -> bool:
    """Ask the C library (glibc) to keep freed memory for the next array to reuse, once per
    process. Returns whether it applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
