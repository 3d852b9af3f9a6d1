"""
Keep frame-sized buffers in the heap instead of fresh memory maps. No ROS here.

glibc's malloc serves each allocation over 128 kB (at first) with its own mmap and returns it
to the kernel on free, so every frame-sized temporary (a 640x480 RGB frame is 900 kB) costs
hundreds of page faults when it is first written. On the perception node that was most of
the cost of publishing the overlay: building one 640x480 Image message took 1.2 ms, 0.07 ms
with the tuning below (bench/bench_perception.py).
"""

import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT_BYTES = 64 << 20


def keep_large_buffers(limit_bytes: int = DEFAULT_LIMIT_BYTES) -> bool:
    """
    Ask malloc to serve allocations up to `limit_bytes` from the heap and keep freed memory.

    Process-wide; safe to call more than once. Returns whether it applied (False off glibc,
    where there is no mallopt or it refuses).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit_bytes))) and bool(
        mallopt(M_TRIM_THRESHOLD, 2 * int(limit_bytes)))
