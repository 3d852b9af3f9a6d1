"""followme_sim.lockstep without ROS: the two waits, their timeouts and what they report."""

from followme_sim.lockstep import COMMAND, DETECTION, Lockstep
import pytest


def test_waits_for_the_frames_detection_then_records_how_long():
    lock = Lockstep(timeout=1.0, control_rate=0.0)
    lock.frame_published(3, now=10.0)
    assert lock.waiting(10.5, 0.3) == (True, [])
    lock.detection(2, now=10.6)                       # an older frame's: still waiting
    assert lock.waiting(10.6, 0.3)[0]
    lock.detection(3, now=10.7)
    assert lock.waiting(10.7, 0.3) == (False, [])
    assert lock.detection_waits == [pytest.approx(0.7)]


def test_waits_at_each_controller_tick_for_one_command():
    lock = Lockstep(timeout=1.0, control_rate=20.0)
    lock.stepped(0.02, 0.04, now=1.0)                 # no tick crossed (ticks at 0.05 k)
    assert not lock.waiting(1.0, 0.04)[0]
    lock.stepped(0.04, 0.06, now=1.0)                 # crossed 0.05
    assert lock.waiting(1.1, 0.06)[0]
    lock.command(sim_time=0.06)
    assert not lock.waiting(1.2, 0.06)[0]
    assert lock.command_delays == [0.0]
    lock.stepped(0.08, 0.1, now=2.0)                  # 0.1 is a tick: float sums still count
    assert lock.waiting(2.0, 0.1)[0]


def test_a_silent_input_is_waited_for_again_once_it_arrives():
    lock = Lockstep(timeout=0.5, control_rate=0.0)
    lock.frame_published(0, now=0.0)
    waiting, ran_out = lock.waiting(0.6, 0.0)
    assert not waiting and [(t.topic, t.for_good) for t in ran_out] == [(DETECTION, False)]
    assert lock.timeouts == 1 and DETECTION in lock.silent
    lock.frame_published(1, now=0.7)                  # silent: no wait
    assert not lock.waiting(0.7, 0.1)[0]
    lock.detection(1, now=0.8)                        # it is back
    lock.frame_published(2, now=0.9)
    assert lock.waiting(0.9, 0.2)[0]


def test_commands_that_miss_our_ticks_end_command_waits_for_the_run():
    lock = Lockstep(timeout=0.5, control_rate=20.0)
    lock.command(sim_time=0.0)                        # commands do come...
    lock.stepped(0.04, 0.06, now=1.0)
    waiting, ran_out = lock.waiting(1.6, 0.06)        # ...but none for this tick
    assert not waiting and ran_out[0].topic == COMMAND and ran_out[0].for_good
    assert not lock.commands_wanted
    lock.command(sim_time=0.07)
    lock.stepped(0.08, 0.1, now=2.0)
    assert not lock.waiting(2.0, 0.1)[0]


def test_both_waits_pending_a_detection_timeout_does_not_skip_the_command_wait():
    lock = Lockstep(timeout=0.5, control_rate=20.0)
    lock.stepped(0.08, 0.1, now=1.0)
    lock.frame_published(1, now=1.0)
    waiting, ran_out = lock.waiting(1.2, 0.1)
    assert waiting and not ran_out
    lock.command(sim_time=0.1)
    waiting, ran_out = lock.waiting(1.6, 0.1)         # detection ran out, command came
    assert not waiting and [t.topic for t in ran_out] == [DETECTION]


def test_pacing_falls_back_when_nothing_is_waited_for():
    assert Lockstep(enabled=True).paces_simulation()
    assert not Lockstep(enabled=False).paces_simulation()
    lock = Lockstep(control_rate=0.0)
    lock.silent.add(DETECTION)
    assert not lock.paces_simulation()
