"""Let an event through at most N times a second, on average exactly N. No ROS here."""


class RateLimiter:
    """
    Decides, per frame, whether a throttled output goes out.

    The schedule advances by whole periods, so with frames faster than the limit the long-run
    rate is the limit itself; "at least a period since the last one" would give 7.5 Hz for a
    10 Hz limit on 30 Hz frames, whose gaps are a hair under 100 ms as often as over.
    """

    def __init__(self, max_rate_hz: float = 0.0):
        self.max_rate_hz = max_rate_hz  # the setter also starts the schedule

    @property
    def max_rate_hz(self) -> float:
        return self._max_rate_hz

    @max_rate_hz.setter
    def max_rate_hz(self, value: float):
        if value < 0.0:
            raise ValueError(f'max_rate_hz must be >= 0 (0: no limit), not {value}')
        self._max_rate_hz = float(value)
        self._next_due = None  # a new limit starts a new schedule

    def ready(self, now_s: float) -> bool:
        """Whether the output at time `now_s` (seconds, any clock) goes out."""
        if self._max_rate_hz == 0.0:
            return True
        period = 1.0 / self._max_rate_hz
        due = self._next_due
        # First call, the clock jumped back (a bag looped, sim time reset) or the frames fell a
        # whole period behind the schedule: start it again from now.
        if due is None or now_s < due - period or now_s - due >= period:
            self._next_due = now_s + period
            return True
        if now_s < due:
            return False
        self._next_due = due + period
        return True
