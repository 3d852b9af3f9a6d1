import random

from followme_common.rate_limit import RateLimiter
import pytest


def count(limiter, times):
    return sum(limiter.ready(t) for t in times)


def test_no_limit_lets_every_frame_through():
    assert count(RateLimiter(0.0), [i / 30 for i in range(300)]) == 300


def test_long_run_rate_is_the_limit_on_faster_frames():
    # 30 Hz frames for 10 s against a 10 Hz limit: every third frame, not every fourth.
    assert count(RateLimiter(10.0), [i / 30 for i in range(300)]) == 100
    # Jittered frames too (a "a period since the last one" rule gives 76-85 here).
    alternating = [i / 30 + (0.005 if i % 2 else -0.005) for i in range(300)]
    rng = random.Random(1)
    noisy = [i / 30 + rng.uniform(-0.003, 0.003) for i in range(300)]
    for times in (alternating, noisy):
        assert count(RateLimiter(10.0), times) in (99, 100, 101)


def test_slower_frames_all_go_through():
    assert count(RateLimiter(10.0), [i / 5 for i in range(50)]) == 50


def test_clock_jumping_back_restarts_the_schedule():
    limiter = RateLimiter(10.0)
    assert limiter.ready(100.0)
    assert not limiter.ready(100.05)
    assert limiter.ready(3.0)  # a bag looped: sim time went back
    assert not limiter.ready(3.05)
    assert limiter.ready(3.1)


def test_new_limit_applies_at_once_and_bad_limits_are_refused():
    limiter = RateLimiter(1.0)
    assert limiter.ready(0.0) and not limiter.ready(0.5)
    limiter.max_rate_hz = 0.0
    assert limiter.ready(0.6)
    with pytest.raises(ValueError, match='>= 0'):
        RateLimiter(-1.0)
