"""followme_common.memory: the malloc tuning the perception and simulator nodes apply."""

import platform

from followme_common.memory import keep_large_buffers
import numpy as np
import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc only')
def test_applies_on_glibc_and_large_buffers_still_work():
    assert keep_large_buffers() is True
    assert keep_large_buffers(8 << 20) is True          # idempotent, any limit
    frames = [np.full((480, 640, 3), i, np.uint8) for i in range(4)]
    assert [int(f[-1, -1, -1]) for f in frames] == [0, 1, 2, 3]
