"""Action-chunk execution at the control rate: chunk scheduling, transitions, safety filter, e-stop.

Pure logic with an injected clock (nanosecond integers); the ROS executor node only feeds it messages.
"""
from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.robot import aloha

NUM_JOINTS = aloha.STATE_DIM
CONTROL_HZ = aloha.CONTROL_HZ


# ---------------------------------------------------------------------------------------------
# Safety filter
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SafetyConfig:
    """Per-joint position limits and speed limits (policy layout, 14 joints), at one control rate."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_velocity: tuple[float, ...]   # per joint, units per second
    control_hz: float = CONTROL_HZ

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "max_velocity"):
            if len(getattr(self, name)) != NUM_JOINTS:
                raise ConfigError(f"SafetyConfig.{name} has {len(getattr(self, name))} entries, expected {NUM_JOINTS}")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper)):
            raise ConfigError(f"SafetyConfig: every lower limit must be below its upper limit, got {self.lower} / {self.upper}")
        if any(not v > 0 for v in self.max_velocity) or not self.control_hz > 0:
            raise ConfigError("SafetyConfig: max_velocity entries and control_hz must be positive")

    @classmethod
    def aloha_vx300s(cls, control_hz: float = CONTROL_HZ) -> "SafetyConfig":
        """Two ViperX 300 s followers (real ALOHA and the gym-aloha sim), normalised grippers."""
        lower, upper, vel = aloha.joint_lower_limits(), aloha.joint_upper_limits(), aloha.joint_max_velocities()
        return cls(lower, upper, vel, control_hz)

    @property
    def max_step(self) -> np.ndarray:
        """(14,) largest allowed change of the command between two consecutive ticks."""
        return np.asarray(self.max_velocity, dtype=float) / self.control_hz


@dataclass(frozen=True)
class FilterResult:
    command: np.ndarray        # (14,) what may be sent to the robot
    rejected: bool             # target had NaN/Inf: command is the previous one (hold)
    clipped: bool              # some joint was moved inside its position limits
    rate_limited: bool         # some joint's change was clamped to max_step


def filter_command(
    target: np.ndarray, previous: np.ndarray, lower: np.ndarray, upper: np.ndarray, max_step: np.ndarray
) -> FilterResult:
    """Limit `target` to the joint ranges, then its change from `previous` to +-max_step per joint.

    Position clipping comes first so the rate limit always holds, even when `previous` lies outside
    the limits (the robot then walks back inside at the allowed speed instead of jumping).
    """
    target = np.asarray(target, dtype=float)
    previous = np.asarray(previous, dtype=float)
    if target.shape != previous.shape:
        raise ShapeError(f"target has shape {target.shape}, previous command {previous.shape}")
    if not np.isfinite(target).all():
        return FilterResult(previous.copy(), rejected=True, clipped=False, rate_limited=False)
    inside = np.clip(target, lower, upper)
    delta = inside - previous
    limited = np.clip(delta, -max_step, max_step)
    return FilterResult(
        previous + limited,
        rejected=False,
        clipped=bool((inside != target).any()),
        rate_limited=bool((limited != delta).any()),
    )


class SafetyFilter:
    """`filter_command` with its limits bound from a `SafetyConfig`."""

    def __init__(self, config: SafetyConfig | None = None):
        self.config = config or SafetyConfig.aloha_vx300s()
        self._lower = np.asarray(self.config.lower, dtype=float)
        self._upper = np.asarray(self.config.upper, dtype=float)
        self._max_step = self.config.max_step

    def __call__(self, target: np.ndarray, previous: np.ndarray) -> FilterResult:
        return filter_command(target, previous, self._lower, self._upper, self._max_step)


# ---------------------------------------------------------------------------------------------
# E-stop
# ---------------------------------------------------------------------------------------------
class EStop:
    """Latching emergency stop: once engaged it stays engaged until `clear()` is called."""

    def __init__(self) -> None:
        self.engaged = False
        self.reason = ""
        self.engaged_ns: int | None = None

    def engage(self, reason: str, now_ns: int) -> None:
        if not self.engaged:  # keep the first reason and time: that is what an operator needs
            self.engaged, self.reason, self.engaged_ns = True, reason, int(now_ns)

    def clear(self) -> bool:
        """Release the latch; returns whether it was engaged."""
        was = self.engaged
        self.engaged, self.reason = False, ""
        return was


# ---------------------------------------------------------------------------------------------
# Chunks and the executor
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimedChunk:
    """An action chunk on the robot clock: step i is meant for `stamp_ns + i * step_ns`.

    `stamp_ns` is the observation time the chunk was computed from; `source` is "policy" or "planner".
    """

    actions: np.ndarray            # actions_T_J, J = 14
    stamp_ns: int
    step_ns: int = int(1e9 / CONTROL_HZ)
    source: str = "policy"

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def index_at(self, now_ns: int) -> int:
        """Step whose scheduled time is nearest to `now_ns` (0 for a chunk stamped in the future)."""
        return max(0, int(math.floor((now_ns - self.stamp_ns) / self.step_ns + 0.5)))


class ExecState(str, enum.Enum):
    WAITING = "waiting"                   # no joint state yet: nothing to command from
    PLAYING = "playing"
    BLENDING = "blending"                 # first ticks after a switch, converging onto the new chunk
    HOLD_NO_CHUNK = "hold_no_chunk"
    HOLD_STALE_CHUNK = "hold_stale_chunk"  # chunk too old or played to its end
    HOLD_STALE_OBSERVATION = "hold_stale_observation"
    HOLD_ESTOP = "hold_estop"


@dataclass(frozen=True)
class ExecutorConfig:
    """25 Hz chunk execution. Timeouts in seconds on the same clock as the chunk stamps."""

    control_hz: float = CONTROL_HZ
    chunk_len: int = 50
    blend_steps: int = 8                  # ticks over which a switch's offset decays to zero
    max_chunk_age_s: float = 2.0          # by stamp; 2 s = a whole 50-step chunk at 25 Hz
    max_observation_age_s: float = 0.2    # joint states older than this -> hold (5 periods)
    max_future_s: float = 0.5             # chunks stamped further ahead reveal a clock mismatch
    prefer_planner: bool = True
    safety: SafetyConfig = field(default_factory=SafetyConfig.aloha_vx300s)
    # None: play the newest chunk of a source. A number k >= 0: `TemporalEnsemble` with that decay.
    ensemble_decay: float | None = None

    def __post_init__(self) -> None:
        if not self.control_hz > 0 or self.blend_steps < 0 or self.chunk_len <= 0:
            raise ConfigError(f"ExecutorConfig: control_hz > 0, blend_steps >= 0, chunk_len > 0 needed, got {self}")
        if self.ensemble_decay is not None and not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ConfigError(
                f"ExecutorConfig.ensemble_decay must be None or a finite k >= 0, got {self.ensemble_decay}")
        if not (self.max_chunk_age_s > 0 and self.max_observation_age_s > 0 and self.max_future_s >= 0):
            raise ConfigError("ExecutorConfig: timeouts must be positive")
        if abs(self.safety.control_hz - self.control_hz) > 1e-9:
            raise ConfigError(
                f"ExecutorConfig.control_hz {self.control_hz} differs from safety.control_hz "
                f"{self.safety.control_hz}: the per-step limit would be wrong"
            )

    @classmethod
    def aloha(cls, control_hz: float = CONTROL_HZ, **overrides) -> "ExecutorConfig":
        return cls(control_hz=control_hz, safety=SafetyConfig.aloha_vx300s(control_hz), **overrides)

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.control_hz))


@dataclass(frozen=True)
class Tick:
    """What one control tick decided."""

    command: np.ndarray | None     # (14,) filtered command; None only while WAITING
    state: ExecState
    source: str = ""               # "policy" / "planner" when playing a chunk
    step: int = -1                 # index into the played chunk
    chunk_age_s: float = math.nan  # now - stamp of the played (or newest) chunk
    filter: FilterResult | None = None


class TemporalEnsemble:
    """ACT's temporal ensembling (Zhao et al. 2023, arXiv:2304.13705, section 3.3) over one source's chunks.

    Rule: each tick commands the weighted mean of the current step of every live chunk (stamp age within
    the executor's limit, steps left), chunk i weighing exp(-decay * i) with i = 0 the OLDEST live chunk, so
    a larger decay trusts new chunks less and smooths more; ACT deploys decay 0.01. Meant for a policy
    queried every few steps; a new chunk joins the mean without a blend, since the mean moves by a fraction
    of what the newest chunk disagrees with. benchmarks/RESULTS.md holds the evidence for deploying the shipped
    sim checkpoint that way, and for its decay 0.2 ("The ensemble's decay").
    """

    def __init__(self, decay: float) -> None:
        if not (math.isfinite(decay) and decay >= 0):
            raise ConfigError(f"temporal ensemble decay must be a finite number >= 0, got {decay}")
        self.decay = float(decay)
        self._chunks: dict[str, list[TimedChunk]] = {}   # per source, oldest first

    def add(self, chunk: TimedChunk) -> None:
        self._chunks.setdefault(chunk.source, []).append(chunk)

    def clear(self) -> None:
        self._chunks.clear()

    def __bool__(self) -> bool:
        return any(self._chunks.values())

    def action(self, source: str, now_ns: int, is_live) -> np.ndarray:
        """The weighted mean of the current step of `source`'s live chunks (`is_live(chunk)`); the expired
        are forgotten. The caller guarantees at least one live chunk (the newest it chose to play)."""
        live = [c for c in self._chunks.get(source, []) if is_live(c)]
        self._chunks[source] = live
        actions = np.stack([np.asarray(c.actions[c.index_at(now_ns)], dtype=float) for c in live])
        weights = np.exp(-self.decay * np.arange(len(live)))
        return weights @ actions / weights.sum()


class SteadyClockMap:
    """Places header stamps (system / ROS time) on a steady clock, so a system clock step changes nothing.

    Chunk stamps are observation times on the system clock of whoever stamped them; the executor decides on
    a steady clock. Each stamp is mapped once, on receipt, with the offset (system - steady) in effect when
    it was stamped: the newest offset whose period holds the mapped time (a stamp taken before a step is
    mapped with the offset before it). A change of the offset by more than `step_ns` starts a new period;
    smaller changes (NTP slewing) update the current one.
    """

    def __init__(self, step_ns: int = 5_000_000, history: int = 8) -> None:
        self.step_ns = int(step_ns)
        self._periods: deque[tuple[int, int]] = deque(maxlen=history)   # (steady start, offset), oldest first

    def observe(self, system_ns: int, steady_ns: int) -> None:
        """Read both clocks at (nearly) the same moment; call it every tick and on each receipt."""
        offset = int(system_ns) - int(steady_ns)
        if self._periods and abs(offset - self._periods[-1][1]) <= self.step_ns:
            self._periods[-1] = (self._periods[-1][0], offset)
            return
        self._periods.append((int(steady_ns) if self._periods else -(2**62), offset))

    @property
    def steps(self) -> int:
        """Clock steps seen (within the history)."""
        return max(0, len(self._periods) - 1)

    def to_steady(self, stamp_ns: int, steady_now_ns: int, future_ns: int = 0) -> int:
        """`stamp_ns` (system time) on the steady clock. A mapped time may lie up to `future_ns` ahead of now."""
        if not self._periods:
            raise ConfigError("SteadyClockMap.to_steady before the first observe(): no offset known yet")
        for start, offset in reversed(self._periods):
            steady = int(stamp_ns) - offset
            if start <= steady <= steady_now_ns + future_ns:
                return steady
        return int(stamp_ns) - self._periods[-1][1]


class ChunkExecutor:
    """Plays timed action chunks one step per tick, switching and holding safely.

    Transitions: when the played chunk changes (a newer chunk, policy <-> planner, or resuming from a
    hold) the offset between the last command and the new chunk's current step decays linearly to zero
    over `blend_steps` ticks ("offset blending"). It needs no memory of the old chunk, so switches in
    the middle of a blend stay continuous; the per-tick jump is 1/(blend_steps+1) of the offset, and
    the safety filter's rate limit bounds whatever is left. RTC-style inpainting belongs in the policy
    (it changes what is sampled); this executor is correct with or without it.

    With `ensemble_decay` set, a source's live chunks are averaged by a `TemporalEnsemble` instead; a
    switch between sources or out of a hold blends as above.

    Clearing an e-stop re-arms like a re-anchor does for chunks: only chunks observed after the clear play,
    so motion resumes from a chunk computed at the held pose, blended from the held command.
    """

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig()
        self.safety = SafetyFilter(self.config.safety)
        self.estop = EStop()
        self._chunks: dict[str, TimedChunk] = {}
        decay = self.config.ensemble_decay
        self.ensemble: TemporalEnsemble | None = None if decay is None else TemporalEnsemble(decay)
        self._min_stamp_ns: int | None = None   # chunks observed before an e-stop never resume
        self._observation: np.ndarray | None = None
        self._observation_ns: int | None = None
        self._last_command: np.ndarray | None = None
        self._active: tuple[str, int] | None = None
        self._offset: np.ndarray | None = None
        self._blend_left = 0
        self.counters: dict[str, int] = {}

    # -- inputs -------------------------------------------------------------------------------
    def observe(self, qpos: np.ndarray, now_ns: int) -> None:
        """Latest measured joint positions (14,), received at `now_ns`."""
        qpos = np.asarray(qpos, dtype=float)
        if qpos.shape != (NUM_JOINTS,):
            raise ShapeError(f"joint state has shape {qpos.shape}, expected ({NUM_JOINTS},)")
        if not np.isfinite(qpos).all():
            self.count("observation_rejected_nonfinite")
            return
        self._observation, self._observation_ns = qpos, int(now_ns)

    def submit(self, chunk: TimedChunk, now_ns: int) -> str:
        """Offer a chunk; returns "accepted" or the reason it was rejected."""
        reason = self._check(chunk, now_ns)
        self.count(f"chunk_{reason}")
        if reason == "accepted":
            self._chunks[chunk.source] = chunk
            if self.ensemble is not None:
                self.ensemble.add(chunk)
        return reason

    def engage_estop(self, reason: str, now_ns: int) -> None:
        self.estop.engage(reason, now_ns)
        # Chunks computed before the stop describe a world the operator just stopped: drop them.
        self._forget_chunks(now_ns)

    def clear_estop(self, now_ns: int) -> bool:
        """Release the latch; returns whether it was engaged. Chunks observed before `now_ns` (while the
        arms held) never play: their current steps lie wherever the policy meant the arms to be by now."""
        was = self.estop.clear()
        if was:
            self._forget_chunks(now_ns)
        return was

    def reanchor(self, now_ns: int) -> None:
        """Forget chunks and the last command: hold the next measured position (after a sim reset, or
        after the arms were moved by hand), and refuse chunks observed before `now_ns`."""
        self._forget_chunks(now_ns)
        self._last_command = None
        self._active = None
        # Observations from before the reset show the old pose; wait for a fresh one.
        self._observation = self._observation_ns = None

    def resume_from_measured(self) -> None:
        """Forget the last command (not the chunks): the next tick holds the measured position, and a chunk
        blends in from there. For a restart of command output, when the arms may have moved meanwhile."""
        self._last_command = None
        self._active = None

    # -- the tick -----------------------------------------------------------------------------
    def tick(self, now_ns: int) -> Tick:
        reference = self._last_command if self._last_command is not None else self._observation
        if reference is None:
            self.count("tick_waiting")
            return Tick(None, ExecState.WAITING)
        hold = None
        chosen = None
        if self.estop.engaged:
            hold = ExecState.HOLD_ESTOP
        elif self._observation_ns is None or now_ns - self._observation_ns > self.config.max_observation_age_s * 1e9:
            hold = ExecState.HOLD_STALE_OBSERVATION
        else:
            chosen = self._select(now_ns)
            if chosen is None:
                hold = ExecState.HOLD_STALE_CHUNK if self._chunks else ExecState.HOLD_NO_CHUNK
        newest = max(self._chunks.values(), key=lambda c: c.stamp_ns, default=None)
        if hold is not None:
            self._active = None  # resuming later is a transition and gets blended
            result = self.safety(reference, reference)
            age = (now_ns - newest.stamp_ns) / 1e9 if newest is not None else math.nan
            self._last_command = result.command
            self.count(f"tick_{hold.value}")
            return Tick(result.command, hold, chunk_age_s=age, filter=result)

        chunk, step = chosen
        if self.ensemble is None:
            raw = chunk.actions[step]
            key = (chunk.source, chunk.stamp_ns)
        else:
            raw = self.ensemble.action(chunk.source, now_ns, lambda c: self._playable(c, now_ns) is not None)
            key = (chunk.source, -1)       # the mean moves smoothly as chunks join: no blend per chunk
        if key != self._active:
            self._active = key
            self._offset = reference - raw
            self._blend_left = self.config.blend_steps
            self.count("switch")
        if self._blend_left > 0:
            weight = self._blend_left / (self.config.blend_steps + 1)
            target = raw + weight * self._offset
            self._blend_left -= 1
            state = ExecState.BLENDING
        else:
            target = raw
            state = ExecState.PLAYING
        result = self.safety(target, reference)
        if result.rejected:
            self.count("tick_rejected_nonfinite")
        self._last_command = result.command
        self.count(f"tick_{state.value}")
        return Tick(result.command, state, chunk.source, step, (now_ns - chunk.stamp_ns) / 1e9, result)

    # -- internals ----------------------------------------------------------------------------
    def _check(self, chunk: TimedChunk, now_ns: int) -> str:
        actions = np.asarray(chunk.actions)
        if actions.ndim != 2 or actions.shape[1] != NUM_JOINTS or actions.shape[0] == 0:
            return "rejected_shape"
        if not np.isfinite(actions).all():
            return "rejected_nonfinite"
        if chunk.step_ns <= 0:
            return "rejected_step"
        if chunk.stamp_ns - now_ns > self.config.max_future_s * 1e9:
            return "rejected_future"
        if self._min_stamp_ns is not None and chunk.stamp_ns < self._min_stamp_ns:
            return "rejected_before_stop"  # observed before the last e-stop, its clear, or a re-anchor
        current = self._chunks.get(chunk.source)
        if current is not None and chunk.stamp_ns <= current.stamp_ns:
            return "rejected_out_of_order"
        return "accepted"

    def _playable(self, chunk: TimedChunk | None, now_ns: int) -> tuple[TimedChunk, int] | None:
        if chunk is None or now_ns - chunk.stamp_ns > self.config.max_chunk_age_s * 1e9:
            return None
        step = chunk.index_at(now_ns)
        return (chunk, step) if step < len(chunk) else None

    def _forget_chunks(self, now_ns: int) -> None:
        self._chunks.clear()
        if self.ensemble is not None:
            self.ensemble.clear()
        self._min_stamp_ns = int(now_ns)

    def _select(self, now_ns: int) -> tuple[TimedChunk, int] | None:
        policy = self._playable(self._chunks.get("policy"), now_ns)
        planner = self._playable(self._chunks.get("planner"), now_ns)
        if planner is not None and (self.config.prefer_planner or policy is None):
            return planner
        return policy if policy is not None else planner

    def count(self, key: str) -> None:
        """Bump a diagnostics counter (also used by callers for rejections they detect, e.g. bad messages)."""
        self.counters[key] = self.counters.get(key, 0) + 1


# ---------------------------------------------------------------------------------------------
# Loop timing statistics (for diagnostics and benchmarks)
# ---------------------------------------------------------------------------------------------
class LoopStats:
    """Rolling statistics of a periodic loop: period, jitter and lateness against the nominal period."""

    def __init__(self, period_ns: int, window: int = 250):
        self.period_ns = int(period_ns)
        self._periods_ns: deque[int] = deque(maxlen=window)
        self._last_ns: int | None = None

    def record(self, now_ns: int) -> None:
        if self._last_ns is not None:
            self._periods_ns.append(int(now_ns) - self._last_ns)
        self._last_ns = int(now_ns)

    def summary(self) -> dict[str, float]:
        """Mean period, rate, p99 |period - nominal| (jitter) and the worst late tick, in ms / Hz."""
        if not self._periods_ns:
            return {"ticks": 0}
        periods = np.asarray(self._periods_ns, dtype=float)
        jitter = np.abs(periods - self.period_ns)
        return {
            "ticks": int(periods.size),
            "period_ms_mean": float(periods.mean() / 1e6),
            "rate_hz": float(1e9 / periods.mean()),
            "jitter_ms_p99": float(np.percentile(jitter, 99) / 1e6),
            "late_ms_max": float(max(0.0, (periods - self.period_ns).max()) / 1e6),
        }
