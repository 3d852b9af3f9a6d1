"""
When the simulator waits for the loop it drives. No ROS here: sim_node feeds it events.

Two waits keep a closed loop repeatable whatever the machine's speed:
- after each camera frame, for that frame's hero_detection (perception has seen it);
- at each tick of the controller's timer in simulated time (multiples of 1 / control_rate),
  for one cmd_vel (the controller has acted), so a command takes effect at the same simulated
  time on every run.

An input that does not come within the timeout is not waited for again until it arrives, so a
simulator without perception or control runs on after one timeout. If commands do come but one
misses a tick, the controller's ticks are not ours (another rate, or not on simulated time):
waiting for commands stops for the run.
"""

from dataclasses import dataclass, field
import math

DETECTION, COMMAND = 'hero_detection', 'cmd_vel'


@dataclass
class Timeout:
    """A wait that ran out: what to tell the user."""

    topic: str
    what: str
    hint: str
    for_good: bool = False   # True: no more waiting for this input in this run


@dataclass
class Lockstep:
    """Bookkeeping of the two waits; times are wall seconds unless named sim_*."""

    enabled: bool = True
    timeout: float = 1.0
    control_rate: float = 20.0     # 0: never wait for commands
    silent: set = field(default_factory=set)  # inputs not waited for until they arrive
    commands_wanted: bool = True   # off once commands prove not to come at our ticks
    timeouts: int = 0
    detection_waits: list = field(default_factory=list)   # wall s, frame -> its detection
    command_delays: list = field(default_factory=list)    # sim s, tick -> the next command
    _frame: tuple = None           # (frame index, wall time published)
    _command: tuple = None         # (commands received then, wall time of the tick)
    _commands: int = 0
    _last_tick: float = None       # sim time of the last controller tick crossed

    # Events --------------------------------------------------------------------------------

    def frame_published(self, index, now):
        if self.enabled and DETECTION not in self.silent:
            self._frame = (index, now)

    def stepped(self, sim_before, sim_after, now):
        """Note a physics step; start a command wait if it crossed a controller tick."""
        if self.control_rate <= 0:
            return
        # Ticks fall on multiples of the period; the epsilon absorbs float sums of steps.
        ticks = (math.floor(t * self.control_rate + 1e-6) for t in (sim_before, sim_after))
        if next(ticks) < next(ticks):
            self._last_tick = sim_after
            if self.enabled and self.commands_wanted and COMMAND not in self.silent:
                self._command = (self._commands, now)

    def detection(self, index, now):
        """Note that the hero_detection of frame `index` arrived."""
        self.silent.discard(DETECTION)
        if self._frame is not None and self._frame[0] == index:
            self.detection_waits.append(now - self._frame[1])
            self._frame = None

    def command(self, sim_time):
        """Note that a cmd_vel arrived (valid or not)."""
        self._commands += 1
        self.silent.discard(COMMAND)
        if self._last_tick is not None:
            self.command_delays.append(sim_time - self._last_tick)
            self._last_tick = None

    # Queries -------------------------------------------------------------------------------

    def waiting(self, now, sim_time):
        """
        Return (still waiting, [Timeout, ...]).

        A wait past `timeout` ends here and comes back as a Timeout to report.
        """
        ran_out = []
        if self._frame is not None:
            index, since = self._frame
            if now - since < self.timeout:
                return True, ran_out
            self._frame = None
            ran_out.append(self._ran_out(DETECTION, f'frame {index}',
                                         'is the perception node running?'))
        if self._command is not None:
            count, since = self._command
            if self._commands > count:
                self._command = None
            elif now - since < self.timeout:
                return True, ran_out
            elif count == 0:
                self._command = None
                ran_out.append(self._ran_out(COMMAND, f't = {sim_time:.2f} s',
                                             'is the control node running?'))
            else:
                self._command = None
                self.commands_wanted = False
                self.timeouts += 1
                ran_out.append(Timeout(
                    COMMAND, f'the controller tick at t = {sim_time:.2f} s',
                    "set lockstep_control_rate to control_node's rate_hz and run it on "
                    'simulated time', for_good=True))
        return False, ran_out

    def paces_simulation(self):
        """Whether the loop's answers pace the simulation (else it needs a pace of its own)."""
        return self.enabled and (
            DETECTION not in self.silent
            or (self.commands_wanted and COMMAND not in self.silent and self.control_rate > 0))

    def _ran_out(self, topic, what, hint):
        self.timeouts += 1
        self.silent.add(topic)
        return Timeout(topic, what, hint)
