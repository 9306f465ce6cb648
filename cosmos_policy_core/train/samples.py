"""Training samples of the single-stage recipe: policy, world-model and value samples drawn from episodes.

Owns the epoch layout [demos | success rollouts | failure rollouts], value targets and action-chunk padding.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from cosmos_policy_core.checkpoint import DatasetStats
from cosmos_policy_core.data.episode import Episode
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.runtime.images import client_resize
from cosmos_policy_core.layout import LatentLayout

log = logging.getLogger(__name__)

SOURCES = ("demo", "success_rollout", "failure_rollout")
VALUE_ROLES = ("value_v_sas", "value_v_s")


# --- pure functions of the reference recipe -------------------------------------------------------
def value_targets(num_steps: int, success: bool, gamma: float = 0.998) -> np.ndarray:
    """(T,) Monte-Carlo returns of a sparse terminal reward, rescaled to [-1, 1].

    Success: 2·γ^(T-1-t) − 1 (the terminal reward, also a partial score, is divided out);
    failure: −1 everywhere (reference `compute_monte_carlo_returns`).
    """
    if num_steps <= 0:
        raise DataError(f"an episode needs at least one step for value targets, got {num_steps}")
    if not 0 < gamma <= 1:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
    if not success:
        return np.full(num_steps, -1.0, dtype=np.float64)
    steps_to_end = np.arange(num_steps - 1, -1, -1, dtype=np.float64)
    return 2.0 * gamma**steps_to_end - 1.0


def future_index(step: int, num_steps: int, chunk_size: int) -> int:
    """Index of the "future" frame of a sample at `step`: min(step + chunk, T − 1)."""
    return min(step + chunk_size, num_steps - 1)


def action_chunk_with_padding(actions_T_D: np.ndarray, step: int, chunk_size: int) -> np.ndarray:
    """(chunk, D) actions from `step`, the last action repeated when fewer than `chunk` remain."""
    T = actions_T_D.shape[0]
    if not 0 <= step < T:
        raise DataError(f"step {step} outside an episode of {T} steps")
    chunk = actions_T_D[step:step + chunk_size]
    if chunk.shape[0] < chunk_size:
        pad = np.repeat(actions_T_D[-1:], chunk_size - chunk.shape[0], axis=0)
        chunk = np.concatenate([chunk, pad], axis=0)
    return chunk


@dataclass(frozen=True)
class EpochStructure:
    """How many samples of each source one epoch holds, in the order demos | successes | failures."""

    demo: int
    success_rollout: int
    failure_rollout: int

    @property
    def length(self) -> int:
        return self.demo + self.success_rollout + self.failure_rollout

    def source_of(self, index: int) -> tuple[str, int]:
        """(source, index within that source's block) of an epoch position."""
        if not 0 <= index < self.length:
            raise ConfigError(f"epoch position {index} outside an epoch of {self.length}")
        if index < self.demo:
            return "demo", index
        if index < self.demo + self.success_rollout:
            return "success_rollout", index - self.demo
        return "failure_rollout", index - self.demo - self.success_rollout


def epoch_structure(
    demo_steps: int, success_steps: int, failure_steps: int,
    demo_prob: float = 0.5, success_prob: float = 0.5,
) -> EpochStructure:
    """Integer block sizes that realise the sampling probabilities (reference `calculate_epoch_structure`).

    Successes are scaled against failures to `success_prob`, then demos against all rollouts to
    `demo_prob`; the smaller side is up-sampled (indices wrap around its steps), never truncated,
    except that when demos dominate the rollout blocks are re-derived from the demo count.
    """
    for name, p in (("demo_prob", demo_prob), ("success_prob", success_prob)):
        if not 0 <= p <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {p}")
    if min(demo_steps, success_steps, failure_steps) < 0:
        raise ConfigError("step counts must be non-negative")
    if success_steps + failure_steps == 0:
        return EpochStructure(demo_steps, 0, 0)
    s, f = success_steps, failure_steps
    if success_prob == 0 or s == 0:
        s_adj, f_adj, success_prob = 0, f, 0.0
    elif success_prob == 1 or f == 0:
        s_adj, f_adj, success_prob = s, 0, 1.0
    else:
        s_new = int(f * success_prob / (1 - success_prob))
        f_new = int(s * (1 - success_prob) / success_prob)
        s_adj, f_adj = (s_new, f) if s < s_new else (s, f_new)
    if demo_prob == 0 or demo_steps == 0:
        return EpochStructure(0, s_adj, f_adj)
    if demo_prob == 1:
        return EpochStructure(demo_steps, 0, 0)
    d, r = demo_steps, s_adj + f_adj
    d_new = int(r * demo_prob / (1 - demo_prob))
    if d < d_new:
        return EpochStructure(d_new, s_adj, f_adj)
    r_new = int(d * (1 - demo_prob) / demo_prob)
    return EpochStructure(d, int(r_new * success_prob), int(r_new * (1 - success_prob)))


# --- episode access -------------------------------------------------------------------------------
class EpisodeFrames(Protocol):
    """What the sample builder reads from an episode: low-dim arrays whole, camera frames one at a time.

    Episodes on disk are `data.episode.EpisodeFile`s (`data.episode.load_episode_dir`); `InMemoryEpisode` wraps
    one already in RAM.
    """

    name: str
    qpos: np.ndarray        # (T, 14)
    action: np.ndarray      # (T, 14)
    success: bool
    task: str

    def __len__(self) -> int: ...

    def frame(self, camera: str, step: int) -> np.ndarray: ...


class InMemoryEpisode:
    """An `Episode` already in RAM (tests, freshly generated demos)."""

    def __init__(self, episode: Episode, name: str = "episode"):
        self.episode = episode.validate(name)
        self.name = name
        self.qpos, self.action = episode.qpos, episode.action
        self.success, self.task = bool(episode.success), episode.task

    def __len__(self) -> int:
        return len(self.episode)

    def frame(self, camera: str, step: int) -> np.ndarray:
        try:
            return self.episode.images[camera][step]
        except KeyError:
            raise DataError(f"{self.name}: no camera {camera!r} (has {sorted(self.episode.images)})") from None


# --- samples --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSpec:
    """Which sample to build: source block, model role, episode (within the source) and step."""

    source: str
    role: str
    episode: int
    step: int


@dataclass
class TrainingSample:
    """One sample before augmentation and encoding. Low-dim values are normalized to [-1, 1]."""

    current: dict[str, np.ndarray]      # camera slot -> (S, S, 3) uint8
    future: dict[str, np.ndarray]       # camera slot -> (S, S, 3) uint8, frame min(t + chunk, T − 1)
    proprio: np.ndarray                 # (proprio_dim,)
    future_proprio: np.ndarray          # (proprio_dim,)
    actions: np.ndarray                 # (chunk, action_dim)
    value: float                        # target in [-1, 1] at the future frame
    role: str
    task: str
    key: tuple = field(default=())      # (episode name, step): identifies the pixel clip for latent caches


@dataclass(frozen=True)
class SampleConfig:
    """The reference's data recipe (base ALOHA policy by default)."""

    demo_prob: float = 0.5              # demonstrations vs rollouts in an epoch
    success_prob: float = 0.5           # success vs failure rollouts
    world_model_prob: float = 0.5       # a rollout sample is a world-model sample, else a value sample
    treat_demos_as_success_rollouts: bool = True
    value_role: str = "value_v_sas"     # base model: V(s,a,s'); the planning model trains V(s')
    gamma: float = 0.998
    step_stride: int = 1                # sample every k-th step only (1 = the reference; >1 for CPU budgets)
    # Share of demo samples moved to the episode's first `first_steps` sampled steps (0 = the reference).
    # Only there are the arms at rest, so only there must the policy find the object in the cameras;
    # everywhere else the arm's pose already tells where it is heading, and a small model learns to read
    # the reach from the proprioception and stays blind at step 0 (docs/training.md §3).
    first_steps_prob: float = 0.0
    first_steps: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.first_steps_prob <= 1:
            raise ConfigError(f"first_steps_prob must be in [0, 1], got {self.first_steps_prob}")
        if self.first_steps < 1:
            raise ConfigError(f"first_steps must be >= 1, got {self.first_steps}")
        if self.value_role not in VALUE_ROLES:
            raise ConfigError(f"value_role must be one of {VALUE_ROLES}, got {self.value_role!r}")
        if self.step_stride < 1:
            raise ConfigError(f"step_stride must be >= 1, got {self.step_stride}")
        if not 0 <= self.world_model_prob <= 1:
            raise ConfigError(f"world_model_prob must be in [0, 1], got {self.world_model_prob}")


def mix_seed(*parts: int) -> int:
    """A 64-bit seed from integers (steps, ranks, positions), stable across processes and Python runs."""
    digest = hashlib.blake2b(b"/".join(str(int(p)).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SampleBuilder:
    """The epoch of the single-stage recipe over demos and optional rollouts, and sample construction.

    Position p of the infinite sample stream is epoch p // L, slot perm_epoch[p % L] of an epoch of
    length L (a permutation seeded by (seed, epoch)); its world-model / value coin is seeded by
    (seed, p). So the stream depends only on the seed: resuming, or splitting positions across
    ranks, needs no sampler state.
    """

    def __init__(
        self,
        layout: LatentLayout,
        stats: DatasetStats,
        demos: Sequence[EpisodeFrames],
        rollouts: Sequence[EpisodeFrames] = (),
        config: SampleConfig = SampleConfig(),
        seed: int = 0,
    ):
        if not demos and not rollouts:
            raise DataError("no episodes to train on")
        self.layout, self.stats, self.config, self.seed = layout, stats.check_layout(layout), config, int(seed)
        self.demos = list(demos)
        successes = [ep for ep in rollouts if ep.success]
        failures = [ep for ep in rollouts if not ep.success]
        if config.treat_demos_as_success_rollouts:
            successes = self.demos + successes
        self.episodes = {"demo": self.demos, "success_rollout": successes, "failure_rollout": failures}
        # Per source: cumulative step counts, so a block index maps to (episode, step).
        k = config.step_stride
        self._cum = {src: np.cumsum([0] + [-(-len(ep) // k) for ep in eps]) for src, eps in self.episodes.items()}
        self._values = {src: [value_targets(len(ep), ep.success, config.gamma) for ep in eps]
                        for src, eps in self.episodes.items()}
        self.structure = epoch_structure(
            int(self._cum["demo"][-1]), int(self._cum["success_rollout"][-1]), int(self._cum["failure_rollout"][-1]),
            config.demo_prob if self.demos else 0.0, config.success_prob,
        )
        if self.structure.length == 0:
            raise DataError("the epoch is empty: no demonstration or rollout steps")
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.structure.length

    # -- the sample stream --------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng(mix_seed(self.seed, epoch))
            self._perm_cache = (epoch, rng.permutation(self.structure.length))
        return self._perm_cache[1]

    def spec_at(self, position: int) -> SampleSpec:
        """The sample at `position` of the stream (see the class docstring)."""
        L = self.structure.length
        epoch_slot = int(self._permutation(position // L)[position % L])
        return self.spec_for_slot(epoch_slot, np.random.default_rng(mix_seed(self.seed, position, 1)))

    def spec_for_slot(self, slot: int, rng: np.random.Generator) -> SampleSpec:
        """The sample of epoch slot `slot`; `rng` draws the world-model / value coin of rollout slots."""
        source, block_index = self.structure.source_of(slot)
        cum = self._cum[source]
        step_index = block_index % int(cum[-1])       # wrap: an up-sampled block repeats its steps
        episode = int(np.searchsorted(cum, step_index, side="right") - 1)
        step = (step_index - int(cum[episode])) * self.config.step_stride
        if source == "demo":
            role = "policy"
            if self.config.first_steps_prob > 0 and rng.random() < self.config.first_steps_prob:
                last = min(self.config.first_steps, int(cum[episode + 1] - cum[episode]))
                step = int(rng.integers(last)) * self.config.step_stride
        else:
            role = "world_model" if rng.random() < self.config.world_model_prob else self.config.value_role
        return SampleSpec(source, role, episode, step)

    # -- construction -------------------------------------------------------------------------
    def key(self, spec: SampleSpec) -> tuple:
        """(episode name, step): what identifies the sample's pixel clip (the latent-cache key).

        A rollout's name is its file path: rollout directories number their episodes from 0 as demo
        directories do, and an `episode_3` of each must not share a cached latent."""
        ep = self.episodes[spec.source][spec.episode]
        if spec.source != "demo" and not any(ep is d for d in self.demos):
            return (f"rollout:{getattr(ep, 'path', ep.name)}", spec.step)
        return (ep.name, spec.step)

    def build(self, spec: SampleSpec, images: bool = True) -> TrainingSample:
        """The sample of `spec`; `images=False` skips reading the frames (its latent is cached)."""
        if spec.source not in SOURCES:
            raise ConfigError(f"unknown sample source {spec.source!r}; choose one of {SOURCES}")
        ep = self.episodes[spec.source][spec.episode]
        T = len(ep)
        layout = self.layout
        fut = future_index(spec.step, T, layout.chunk_size)
        size = layout.image_size
        current, future = {}, {}
        if images:
            current = {slot: client_resize(ep.frame(src, spec.step), size)
                       for slot, src in zip(layout.cameras, layout.camera_sources)}
            future = {slot: client_resize(ep.frame(src, fut), size)
                      for slot, src in zip(layout.cameras, layout.camera_sources)}
        actions = action_chunk_with_padding(ep.action, spec.step, layout.chunk_size)
        return TrainingSample(
            current=current,
            future=future,
            proprio=np.asarray(self.stats.normalize_proprio(ep.qpos[spec.step].astype(np.float64)), np.float32),
            future_proprio=np.asarray(self.stats.normalize_proprio(ep.qpos[fut].astype(np.float64)), np.float32),
            actions=np.asarray(self.stats.normalize_actions(actions.astype(np.float64)), np.float32),
            value=float(self._values[spec.source][spec.episode][fut]),
            role=spec.role,
            task=ep.task,
            key=self.key(spec),
        )

    def role_counts(self) -> dict[str, float]:
        """Expected share of each role over one epoch (policy / world model / value)."""
        s = self.structure
        rollouts = s.success_rollout + s.failure_rollout
        wm = self.config.world_model_prob
        return {"policy": s.demo / s.length, "world_model": rollouts * wm / s.length,
                self.config.value_role: rollouts * (1 - wm) / s.length}


__all__ = [
    "SOURCES", "VALUE_ROLES", "value_targets", "future_index", "action_chunk_with_padding",
    "EpochStructure", "epoch_structure", "EpisodeFrames", "InMemoryEpisode",
    "SampleSpec", "TrainingSample", "SampleConfig", "SampleBuilder", "mix_seed",
]
