"""
Replay timing, ROS-free: a bag's messages against the wall clock, with the original gaps.

Bag time maps to wall time through one anchor (bag time, wall time) and the rate; changing the
rate re-anchors at the current bag time, so replay never jumps. While waiting for the next
message the clock callback gets the current bag time every `clock_period` seconds, so a
simulated-time clock (/clock) advances smoothly and never passes a message not yet published.
"""

import threading
import time


class Playback:
    """Plays one bag: `run(stop)` blocks until the end (or forever with `loop`) or `stop`."""

    def __init__(self, reader, publish, publish_clock=None, *, topics=None, rate=1.0,
                 loop=False, start_offset=0.0, delay=0.0, clock_period=0.01, pass_done=None):
        """
        Prepare a replay; nothing is published before run().

        `publish(BagMessage)` sends a message, `publish_clock(ns)` the bag time (optional),
        `pass_done(index)` is called after each pass through the bag (optional).
        """
        if rate <= 0.0:
            raise ValueError(f'rate must be > 0, not {rate}')
        if start_offset < 0.0:
            raise ValueError(f'start offset must be >= 0 s, not {start_offset}')
        self._reader = reader
        self._publish = publish
        self._publish_clock = publish_clock
        self._pass_done = pass_done
        self._topics = topics
        self._loop = loop
        self._delay = delay
        self._clock_period = clock_period
        self.start_ns = reader.start_ns + round(start_offset * 1e9)
        self.end_ns = reader.end_ns
        if reader.message_count and self.start_ns > self.end_ns:
            raise ValueError(
                f'start offset {start_offset:.3f} s is past the end of the bag '
                f'({(self.end_ns - reader.start_ns) / 1e9:.3f} s long)')
        self._lock = threading.Lock()
        self._rate = rate
        self._anchor = (self.start_ns, time.monotonic())
        self._bag_now = self.start_ns
        self.passes = 0
        self.published = 0

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float):
        if rate <= 0.0:
            raise ValueError(f'rate must be > 0, not {rate}')
        with self._lock:
            now = time.monotonic()
            self._anchor = (self._bag_time_at(now), now)
            self._rate = rate

    def progress(self):
        """(seconds of bag time played in this pass, seconds of bag time in a pass)."""
        return (max(0, self._bag_now - self.start_ns) / 1e9,
                max(0, self.end_ns - self.start_ns) / 1e9)

    def run(self, stop: threading.Event):
        self._anchor = (self.start_ns, time.monotonic() + self._delay)
        if not self._sleep_until(self.start_ns, stop):
            return
        while not stop.is_set():
            for message in self._reader.messages(self._topics, self.start_ns):
                if not self._sleep_until(message.timestamp, stop):
                    return
                self._bag_now = message.timestamp
                if self._publish_clock is not None:
                    self._publish_clock(message.timestamp)
                self._publish(message)
                self.published += 1
            self.passes += 1
            if self._pass_done is not None:
                self._pass_done(self.passes)
            if not self._loop:
                return
            with self._lock:
                self._anchor = (self.start_ns, time.monotonic())
                self._bag_now = self.start_ns

    def _bag_time_at(self, wall: float) -> int:
        bag0, wall0 = self._anchor
        return bag0 + round((wall - wall0) * self._rate * 1e9)

    def _sleep_until(self, bag_ns: int, stop: threading.Event) -> bool:
        """Wait for a bag time, ticking the clock; False when stopped."""
        while True:
            with self._lock:
                now = time.monotonic()
                bag0, wall0 = self._anchor
                remaining = wall0 + (bag_ns - bag0) / 1e9 / self._rate - now
                clock_ns = min(bag_ns, max(bag0, self._bag_time_at(now)))
            if remaining <= 0.0:
                return not stop.is_set()
            self._bag_now = max(self._bag_now, clock_ns)
            if self._publish_clock is not None:
                self._publish_clock(clock_ns)
            if stop.wait(min(remaining, self._clock_period)):
                return False
