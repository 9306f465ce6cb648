"""ChunkExecutor, SafetyFilter and EStop with an injected clock: scheduling, transitions, holds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.runtime.execution import (
    ChunkExecutor,
    ExecState,
    ExecutorConfig,
    LoopStats,
    SafetyConfig,
    SafetyFilter,
    SteadyClockMap,
    TemporalEnsemble,
    TimedChunk,
    filter_command,
)

PERIOD = 40_000_000  # ns at 25 Hz
T0 = 1_000_000_000_000
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def ramp_chunk(stamp_ns, start, velocity, n=50, source="policy"):
    """Chunk whose step i = start + velocity * i * 0.04 (a constant-velocity motion)."""
    t = np.arange(n)[:, None] * 0.04
    return TimedChunk(start[None, :] + velocity[None, :] * t, stamp_ns, PERIOD, source)


def make(**overrides):
    ex = ChunkExecutor(ExecutorConfig.aloha(**overrides))
    ex.observe(HOME, T0)
    return ex


# -- safety filter ------------------------------------------------------------------------------
def test_filter_clips_limits_and_rate_in_both_directions():
    cfg = SafetyConfig.aloha_vx300s()
    step = cfg.max_step
    f = SafetyFilter(cfg)
    prev = HOME.copy()
    up = f(prev + 1.0, prev)
    down = f(prev - 1.0, prev)
    assert up.rate_limited and down.rate_limited
    np.testing.assert_allclose(up.command - prev, step)
    np.testing.assert_allclose(down.command - prev, -step)
    # position limit: shoulder upper is 1.25664; from just below, a far target stops at the limit
    prev2 = HOME.copy()
    prev2[1] = 1.2
    out = f(np.where(np.arange(14) == 1, 5.0, prev2), prev2)
    assert out.clipped and out.command[1] == pytest.approx(1.25664)


def test_filter_rejects_nan_and_inf_by_holding():
    f = SafetyFilter()
    for bad in (np.nan, np.inf, -np.inf):
        target = HOME.copy()
        target[3] = bad
        out = f(target, HOME)
        assert out.rejected
        np.testing.assert_array_equal(out.command, HOME)


def test_filter_outside_limits_walks_back_at_rate_limit():
    lower, upper = np.full(14, -1.0), np.full(14, 1.0)
    out = filter_command(np.zeros(14), np.full(14, 3.0), lower, upper, np.full(14, 0.1))
    np.testing.assert_allclose(out.command, 2.9)


def test_safety_config_validation():
    with pytest.raises(ConfigError, match="entries"):
        SafetyConfig((0.0,), (1.0,), (1.0,))
    with pytest.raises(ConfigError, match="control_hz"):
        ExecutorConfig(control_hz=50.0)  # safety preset is for 25 Hz


# -- scheduling -------------------------------------------------------------------------------
def test_waits_without_observation_then_holds_without_chunk():
    ex = ChunkExecutor()
    assert ex.tick(T0).state is ExecState.WAITING and ex.tick(T0).command is None
    ex.observe(HOME, T0)
    tick = ex.tick(T0 + PERIOD)
    assert tick.state is ExecState.HOLD_NO_CHUNK
    np.testing.assert_array_equal(tick.command, HOME)


def test_plays_the_step_scheduled_for_now_skipping_the_past():
    ex = make(blend_steps=0)
    chunk = ramp_chunk(T0, HOME, np.full(14, 0.05))
    assert ex.submit(chunk, T0 + 7 * PERIOD) == "accepted"
    now = T0 + 7 * PERIOD + 1_000_000  # arrived 7 periods late: steps 0..6 are in the past
    ex.observe(HOME, now)
    tick = ex.tick(now)
    assert tick.step == 7 and tick.state is ExecState.PLAYING
    np.testing.assert_allclose(tick.command, chunk.actions[7])
    assert tick.chunk_age_s == pytest.approx(0.281)


def test_switch_to_newer_chunk_blends_without_exceeding_step_limit():
    """Two chunks that disagree by 0.3 rad: the switch is spread over the blend, never a jump."""
    ex = make(blend_steps=8)
    vel = np.zeros(14)
    vel[0] = 0.2
    a = ramp_chunk(T0, HOME, vel)
    b = ramp_chunk(T0 + 10 * PERIOD, HOME + 0.3, vel)  # newer, offset by 0.3 in every joint
    ex.submit(a, T0)
    commands, states = [], []
    for k in range(40):
        now = T0 + k * PERIOD
        ex.observe(HOME, now)
        if k == 12:
            assert ex.submit(b, now) == "accepted"
        tick = ex.tick(now)
        commands.append(tick.command)
        states.append(tick.state)
    steps = np.abs(np.diff(np.array(commands), axis=0))
    max_step = ExecutorConfig.aloha().safety.max_step
    assert (steps <= max_step + 1e-12).all()
    # with 8 blend steps the offset of 0.3 moves 0.3/9 per tick: under the limit, so no rate clamp
    assert steps[12:22, 1].max() < max_step[1]
    assert states[12] is ExecState.BLENDING and states[30] is ExecState.PLAYING
    np.testing.assert_allclose(commands[30], b.actions[b.index_at(T0 + 30 * PERIOD)])


def test_switch_without_blend_is_rate_limited():
    ex = make(blend_steps=0)
    ex.submit(ramp_chunk(T0, HOME, np.zeros(14)), T0)
    ex.tick(T0)
    ex.submit(ramp_chunk(T0 + PERIOD, HOME + 0.5, np.zeros(14)), T0 + PERIOD)
    tick = ex.tick(T0 + PERIOD)
    assert tick.filter.rate_limited
    assert np.abs(tick.command - HOME).max() <= ExecutorConfig.aloha().safety.max_step.max() + 1e-12


def test_temporal_ensemble_averages_live_chunks_oldest_weighted_most():
    """k = ln 2: weights 1, 1/2, 1/4 from the oldest live chunk on; hand-computed means."""
    ex = make(blend_steps=8, ensemble_decay=math.log(2))
    a = ramp_chunk(T0, HOME, np.zeros(14))                       # holds HOME
    b = ramp_chunk(T0 + 10 * PERIOD, HOME + 0.03, np.zeros(14))  # HOME + 0.03
    c = ramp_chunk(T0 + 20 * PERIOD, HOME + 0.06, np.zeros(14))  # HOME + 0.06
    ex.submit(a, T0)
    commands, states = {}, {}
    for k in range(75):
        now = T0 + k * PERIOD
        ex.observe(HOME, now)
        if k in (10, 20):
            assert ex.submit(b if k == 10 else c, now) == "accepted"
        tick = ex.tick(now)
        commands[k], states[k] = tick.command, tick.state
    np.testing.assert_allclose(commands[5], HOME)
    np.testing.assert_allclose(commands[15], HOME + 0.03 * 0.5 / 1.5)                   # a and b
    np.testing.assert_allclose(commands[25], HOME + (0.03 * 0.5 + 0.06 * 0.25) / 1.75)  # a, b and c
    np.testing.assert_allclose(commands[55], HOME + (0.03 + 0.06 * 0.5) / 1.5)          # a played out at 50
    np.testing.assert_allclose(commands[65], HOME + 0.06)                               # only c is left
    assert states[10] is ExecState.PLAYING and states[20] is ExecState.PLAYING          # a new chunk joins, no blend
    assert ex.counters["switch"] == 1
    assert ex.tick(T0 + 70 * PERIOD).state is ExecState.HOLD_STALE_CHUNK                # every chunk played out
    ex.engage_estop("test", T0 + 71 * PERIOD)
    assert not ex.ensemble
    with pytest.raises(ConfigError, match="ensemble_decay"):
        ExecutorConfig.aloha(ensemble_decay=-0.1)


def test_out_of_order_future_bad_shape_and_nan_chunks_are_rejected():
    ex = make()
    assert ex.submit(ramp_chunk(T0 + 5 * PERIOD, HOME, np.zeros(14)), T0 + 5 * PERIOD) == "accepted"
    assert ex.submit(ramp_chunk(T0, HOME, np.zeros(14)), T0 + 6 * PERIOD) == "rejected_out_of_order"
    assert ex.submit(ramp_chunk(T0 + 10**10, HOME, np.zeros(14)), T0) == "rejected_future"
    assert ex.submit(TimedChunk(np.zeros((50, 7)), T0 + 9 * PERIOD), T0 + 9 * PERIOD) == "rejected_shape"
    bad = ramp_chunk(T0 + 8 * PERIOD, HOME, np.zeros(14)).actions.copy()
    bad[20, 4] = np.nan
    assert ex.submit(TimedChunk(bad, T0 + 8 * PERIOD), T0 + 8 * PERIOD) == "rejected_nonfinite"
    assert ex.counters["chunk_rejected_nonfinite"] == 1
    ex.observe(HOME, T0 + 8 * PERIOD)
    assert ex.tick(T0 + 8 * PERIOD).step == 3  # still the accepted chunk


def test_prefers_fresh_planner_chunk_and_falls_back_when_it_is_stale():
    ex = make(blend_steps=0, max_chunk_age_s=1.0)
    ex.submit(ramp_chunk(T0 + 10 * PERIOD, HOME, np.zeros(14), source="policy"), T0 + 10 * PERIOD)
    ex.submit(ramp_chunk(T0, HOME + 0.01, np.zeros(14), source="planner"), T0 + 10 * PERIOD)
    now = T0 + 11 * PERIOD
    ex.observe(HOME, now)
    assert ex.tick(now).source == "planner"
    now = T0 + 30 * PERIOD  # planner chunk now 1.2 s old (> 1.0), policy chunk 0.8 s
    ex.observe(HOME, now)
    assert ex.tick(now).source == "policy"
    ex2 = make(prefer_planner=False)
    ex2.submit(ramp_chunk(T0, HOME, np.zeros(14), source="planner"), T0)
    ex2.submit(ramp_chunk(T0, HOME, np.zeros(14), source="policy"), T0)
    assert ex2.tick(T0).source == "policy"


def test_holds_on_stale_chunk_within_one_period_then_resumes_blended():
    ex = make(blend_steps=4, max_chunk_age_s=0.5)
    vel = np.full(14, 0.1)
    ex.submit(ramp_chunk(T0, HOME, vel), T0)
    last = None
    for k in range(20):
        now = T0 + k * PERIOD
        ex.observe(HOME, now)
        tick = ex.tick(now)
        if k <= 12:  # 12 * 40 ms = 0.48 s <= 0.5 s
            assert tick.state in (ExecState.PLAYING, ExecState.BLENDING)
        else:        # the first tick past the timeout already holds
            assert tick.state is ExecState.HOLD_STALE_CHUNK
            np.testing.assert_array_equal(tick.command, last)
        last = tick.command if k <= 12 else last
    # a fresh chunk resumes through a blend (no jump from the held command)
    now = T0 + 20 * PERIOD
    ex.submit(ramp_chunk(now, HOME + 0.4, np.zeros(14)), now)
    ex.observe(HOME, now)
    tick = ex.tick(now)
    assert tick.state is ExecState.BLENDING
    np.testing.assert_allclose(tick.command - last, (HOME + 0.4 - last) / 5)


def test_chunk_played_to_its_end_holds_last_command():
    ex = make(blend_steps=0, max_chunk_age_s=10.0)
    chunk = ramp_chunk(T0, HOME, np.full(14, 0.05), n=5)
    ex.submit(chunk, T0)
    for k in range(5):
        ex.observe(HOME, T0 + k * PERIOD)
        ex.tick(T0 + k * PERIOD)
    ex.observe(HOME, T0 + 5 * PERIOD)
    tick = ex.tick(T0 + 5 * PERIOD)
    assert tick.state is ExecState.HOLD_STALE_CHUNK
    np.testing.assert_allclose(tick.command, chunk.actions[-1])


def test_holds_on_stale_observation():
    ex = make(max_observation_age_s=0.1)
    ex.submit(ramp_chunk(T0, HOME, np.full(14, 0.1)), T0)
    ex.tick(T0)
    assert ex.tick(T0 + 2 * PERIOD).state is ExecState.BLENDING  # 80 ms old observation: still plays
    assert ex.tick(T0 + 3 * PERIOD).state is ExecState.HOLD_STALE_OBSERVATION
    with pytest.raises(ShapeError):
        ex.observe(np.zeros(7), T0)


def test_estop_latches_drops_old_chunks_until_cleared():
    ex = make(blend_steps=0)
    ex.submit(ramp_chunk(T0, HOME, np.full(14, 0.1)), T0)
    ex.tick(T0)
    ex.engage_estop("operator", T0 + PERIOD)
    held = None
    for k in range(1, 10):
        now = T0 + k * PERIOD
        ex.observe(HOME, now)
        tick = ex.tick(now)
        assert tick.state is ExecState.HOLD_ESTOP
        held = tick.command if held is None else held
        np.testing.assert_array_equal(tick.command, held)
    # a chunk observed before the stop is refused even after clearing; a new one plays
    assert ex.submit(ramp_chunk(T0 + 1, HOME, np.zeros(14)), T0 + 10 * PERIOD) == "rejected_before_stop"
    # a chunk observed while stopped is accepted but dropped by the clear: it would start mid-chunk
    assert ex.submit(ramp_chunk(T0 + 5 * PERIOD, HOME, np.zeros(14)), T0 + 9 * PERIOD) == "accepted"
    assert ex.estop.reason == "operator"
    now = T0 + 10 * PERIOD
    assert ex.clear_estop(now) and not ex.estop.engaged
    assert not ex.clear_estop(now)
    ex.observe(HOME, now)
    assert ex.tick(now).state is ExecState.HOLD_NO_CHUNK
    ex.submit(ramp_chunk(now, held, np.zeros(14)), now)
    assert ex.tick(now + 1).state is ExecState.PLAYING


def test_estop_clear_resumes_by_blending_from_the_held_pose_below_the_rate_limit():
    """A policy keeps sending chunks through a stop (computed from the held pose, moving at 1 rad/s, arriving
    8 steps late, one every 40 steps). At the clear the newest of them is 43 steps old: played from there,
    its current step would lie 1.7 rad away. Instead the arms hold until a chunk observed after the clear
    arrives, and leave the held pose through a blend, never at the rate limit."""
    ex = make(blend_steps=8)
    vel = np.full(14, 1.0)
    vel[[6, 13]] = 0.0
    ex.submit(ramp_chunk(T0, HOME, np.zeros(14)), T0)
    ex.engage_estop("operator", T0 + 10 * PERIOD)
    clear_k, latency = 55, 8
    steps, limited, states = [], [], []
    last = None
    for k in range(1, 135):                     # up to the next chunk (the arms would have moved by then)
        now = T0 + k * PERIOD
        ex.observe(HOME, now)
        if k == clear_k:
            assert ex.clear_estop(now)
        if k % 40 == 20:                        # observed at k - latency from the held pose
            ex.submit(ramp_chunk(T0 + (k - latency) * PERIOD, HOME, vel), now)
        tick = ex.tick(now)
        if last is not None and k > clear_k:
            steps.append(np.abs(tick.command - last).max())
            limited.append(tick.filter.rate_limited)
            states.append(tick.state)
        last = tick.command
    max_step = SafetyConfig.aloha_vx300s().max_step[0]     # arm joints
    assert max(steps) < 0.8 * max_step and not any(limited), (max(steps), max_step)
    assert ExecState.BLENDING in states and ExecState.PLAYING in states
    assert ex.counters["chunk_rejected_before_stop"] == 1   # observed at 52, before the clear at 55


def test_temporal_ensemble_weights_the_oldest_live_chunk_most():
    ens = TemporalEnsemble(math.log(2))
    old, new = ramp_chunk(T0, HOME, np.zeros(14)), ramp_chunk(T0 + PERIOD, HOME + 0.3, np.zeros(14))
    ens.add(old)
    ens.add(new)
    np.testing.assert_allclose(ens.action("policy", T0 + 2 * PERIOD, lambda c: True), HOME + 0.1)
    np.testing.assert_allclose(ens.action("policy", T0 + 2 * PERIOD, lambda c: c is new), HOME + 0.3)
    ens.clear()
    assert not ens
    with pytest.raises(ConfigError, match="decay"):
        TemporalEnsemble(float("nan"))


@pytest.mark.parametrize("step_s", [-3.0, 3.0])
def test_a_system_clock_step_changes_no_executor_decision(step_s):
    """Chunks are stamped on the system clock, which steps by `step_s` at tick 30; observations reach the
    executor 8 ticks late, so chunks observed before the step arrive after it. Mapped onto the steady clock
    the executor plays, accepts and holds exactly as without the step."""

    def run(step_ns: int):
        ex, clock = make(blend_steps=4), SteadyClockMap()
        vel = np.full(14, 0.3)
        system = lambda k: T0 + k * PERIOD + (step_ns if k >= 30 else 0)  # noqa: E731
        commands, verdicts = [], []
        for k in range(90):
            steady = T0 + k * PERIOD
            clock.observe(system(k), steady)
            ex.observe(HOME, steady)
            if k % 5 == 0 and k >= 8:
                chunk = ramp_chunk(system(k - 8), HOME + 0.01 * k, vel)
                stamp = clock.to_steady(chunk.stamp_ns, steady, future_ns=500_000_000)
                verdicts.append(ex.submit(TimedChunk(chunk.actions, stamp, PERIOD, "policy"), steady))
            tick = ex.tick(steady)
            commands.append((tick.state, tick.step, tick.command))
        return commands, verdicts, clock.steps

    reference, stepped = run(0), run(int(step_s * 1e9))
    assert stepped[2] == 1 and reference[2] == 0
    assert stepped[1] == reference[1] and set(reference[1]) == {"accepted"}
    for (state_a, step_a, cmd_a), (state_b, step_b, cmd_b) in zip(reference[0], stepped[0]):
        assert (state_a, step_a) == (state_b, step_b)
        np.testing.assert_array_equal(cmd_a, cmd_b)


def test_steady_clock_map_follows_slewing_and_needs_a_first_reading():
    clock = SteadyClockMap(step_ns=5_000_000)
    with pytest.raises(ConfigError, match="observe"):
        clock.to_steady(T0, T0)
    clock.observe(T0 + 100, T0)
    clock.observe(T0 + PERIOD + 1_100, T0 + PERIOD)       # 1 us of slew: the same period
    assert clock.steps == 0 and clock.to_steady(T0 + PERIOD + 1_100, T0 + PERIOD) == T0 + PERIOD


def test_reanchor_holds_the_new_measured_pose():
    ex = make(blend_steps=0)
    ex.submit(ramp_chunk(T0, HOME, np.full(14, 0.1)), T0)
    ex.tick(T0)
    ex.reanchor(T0 + PERIOD)
    assert ex.tick(T0 + PERIOD).state is ExecState.WAITING  # no observation since the re-anchor
    moved = HOME + 0.2                                       # e.g. the sim reset the arms
    ex.observe(moved, T0 + 2 * PERIOD)
    tick = ex.tick(T0 + 2 * PERIOD)
    assert tick.state is ExecState.HOLD_NO_CHUNK
    np.testing.assert_array_equal(tick.command, moved)      # no pull back to the old command
    assert ex.submit(ramp_chunk(T0, HOME, np.zeros(14)), T0 + 2 * PERIOD) == "rejected_before_stop"


def test_random_chunk_stream_never_exceeds_limits_or_step():
    """Property check: random chunks, random lateness, NaNs, e-stops -> every command is safe."""
    rng = np.random.default_rng(0)
    cfg = ExecutorConfig.aloha(blend_steps=3, max_chunk_age_s=1.0)
    ex = ChunkExecutor(cfg)
    lower, upper = np.array(cfg.safety.lower), np.array(cfg.safety.upper)
    previous = None
    for k in range(600):
        now = T0 + k * PERIOD + int(rng.integers(-3, 3) * 1e6)
        if rng.random() > 0.05:
            ex.observe(HOME + rng.normal(0, 0.01, 14), now)
        if k % 13 == 0:
            actions = HOME + rng.normal(0, 1.5, (50, 14))
            if rng.random() < 0.2:
                actions[rng.integers(50), rng.integers(14)] = np.nan
            ex.submit(TimedChunk(actions, now - int(rng.integers(0, 8)) * PERIOD, PERIOD,
                                 "planner" if rng.random() < 0.3 else "policy"), now)
        if k % 97 == 50:
            ex.engage_estop("test", now)
        if k % 97 == 70:
            ex.clear_estop(now)
        tick = ex.tick(now)
        assert np.isfinite(tick.command).all()
        if previous is not None:
            assert (np.abs(tick.command - previous) <= cfg.safety.max_step + 1e-12).all()
        # inside limits once the walk back from the (inside) start is complete
        assert ((tick.command >= lower - 1e-12) & (tick.command <= upper + 1e-12)).all()
        previous = tick.command


def test_loop_stats():
    stats = LoopStats(PERIOD)
    for k, late in enumerate([0, 0, 5, 0, 0]):
        stats.record(T0 + k * PERIOD + late * 1_000_000)
    s = stats.summary()
    assert s["ticks"] == 4 and s["late_ms_max"] == pytest.approx(5.0)
    assert s["rate_hz"] == pytest.approx(25.0, rel=1e-3)
    assert math.isclose(s["jitter_ms_p99"], 5.0, rel_tol=0.05)
