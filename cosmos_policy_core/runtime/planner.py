"""Best-of-N planning with Cosmos Policy: N action candidates scored by world-model and value ensembles (reference §6).

Candidates run in batches on one device off one cached encode; a deadline returns the best fully scored candidate so far.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from cosmos_policy_core.engines.base import Denoiser
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.policy import VALUE_MODES, ActionChunk, ConditioningCache, CosmosPolicy, Observation

log = logging.getLogger(__name__)

AGGREGATIONS = ("majority_mean", "mean", "lcb", "vote")
DEPTH_AGGREGATIONS = ("last", "mean")


def ensemble_steps(num_samples: int, max_steps: int) -> list[int]:
    """Step count of each ensemble member: linspace(1, max, n) truncated to int ([1, 3, 5], [1, 2, 3, 4, 5])."""
    return np.linspace(1, max_steps, num_samples).astype(int).tolist()


def aggregate_values(values_E_B, scheme: str = "majority_mean", threshold: float = 0.05,
                     lcb_beta: float = 1.0) -> np.ndarray:
    """(B,) score from E ensemble values per candidate (each in [0, 1]), clamped to [0, 1].

    majority_mean: mean of the values above `threshold` if at least half are above it, else 0;
    mean; lcb: mean - beta * std (unbiased std, as torch.std); vote: fraction above `threshold`.
    """
    v = np.asarray(values_E_B, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise ConfigError(f"values must be (ensemble, candidates), got shape {v.shape}")
    if scheme == "mean":
        out = v.mean(0)
    elif scheme == "lcb":
        std = v.std(0, ddof=1) if v.shape[0] > 1 else np.zeros(v.shape[1])
        out = v.mean(0) - lcb_beta * std
    elif scheme == "vote":
        out = (v > threshold).mean(0)
    elif scheme == "majority_mean":
        success = v > threshold
        count = success.sum(0)
        mean_success = np.where(success, v, 0.0).sum(0) / np.maximum(count, 1)
        out = np.where(count / v.shape[0] >= 0.5, mean_success, 0.0)
    else:
        raise ConfigError(f"unknown aggregation {scheme!r}; choose one of {AGGREGATIONS}")
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class PlannerConfig:
    """Best-of-N settings; defaults are the reference ALOHA planning deployment (deploy.py)."""

    num_candidates: int = 8
    action_steps: int = 10
    world_model_samples: int = 3
    world_model_max_steps: int = 5
    value_samples: int = 5
    value_max_steps: int = 5
    value_mode: str = "V(s')"
    aggregation: str = "majority_mean"
    success_threshold: float = 0.05
    lcb_beta: float = 1.0
    search_depth: int = 1
    depth_aggregation: str = "last"
    batch_candidates: int = 8      # candidates scored together; the DiT batch is this × ensemble members
    deadline: float | None = None  # seconds from the start of plan(); None: no deadline
    return_future_images: bool = False

    def __post_init__(self) -> None:
        for name in ("num_candidates", "action_steps", "world_model_samples", "world_model_max_steps",
                     "value_samples", "value_max_steps", "search_depth", "batch_candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PlannerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.value_mode not in VALUE_MODES:
            raise ConfigError(f"unknown value_mode {self.value_mode!r}; choose one of {tuple(VALUE_MODES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.depth_aggregation not in DEPTH_AGGREGATIONS:
            raise ConfigError(f"unknown depth_aggregation {self.depth_aggregation!r}; choose one of {DEPTH_AGGREGATIONS}")
        if self.search_depth > 1 and self.value_mode == "Q(s,a)":
            raise ConfigError("search_depth > 1 needs a world model; Q(s,a) planning has none (as the reference)")

    @property
    def world_model_steps(self) -> list[int]:
        return ensemble_steps(self.world_model_samples, self.world_model_max_steps)

    @property
    def value_steps(self) -> list[int]:
        return ensemble_steps(self.value_samples, self.value_max_steps)


@dataclass
class CandidateScore:
    index: int
    seed: int
    value: float                       # the score used for selection
    values_by_depth: list[float]       # aggregated value per search depth
    raw_values: np.ndarray             # (depth, ensemble) every value sample


@dataclass
class PlanResult:
    """The chosen chunk (None only when the deadline passed before any candidate was scored)."""

    chunk: ActionChunk | None
    best_index: int | None
    num_scored: int
    num_candidates: int
    timed_out: bool
    candidates: list[CandidateScore]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Group:
    scores: list[CandidateScore]
    action_latent: torch.Tensor                 # (n, C, T, H, W) depth-1 action samples
    future_latents: list[torch.Tensor]          # per WM member (n, ...); empty for Q(s,a)


class _DeadlinePassed(Exception):
    pass


def next_state_prior(policy: CosmosPolicy, future_latent_B_C_T_H_W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prior latent, normalized proprio) for the next search depth.

    The predicted future frames move into the current slots, and the *predicted* future proprio
    becomes the current proprio (re-injected by the sampler). The reference keeps re-injecting the
    observation's proprio at every depth (defect §13.4), pairing new images with an old state.
    """
    lay = policy.layout
    src = [lay.index("future_proprio")] + [lay.index(f"future_{c}") for c in lay.cameras]
    dst = [lay.index("proprio")] + list(lay.index(c) for c in lay.cameras)
    prior = future_latent_B_C_T_H_W.clone()
    prior[:, :, dst] = future_latent_B_C_T_H_W[:, :, src]
    return prior, policy.normalized_future_proprio(future_latent_B_C_T_H_W).float()


class PolicyFirst:
    """A policy and a planner sharing one device and one copy of the weights in one process, the policy's chunk first.

    The policy computes its chunk inside `policy_turn()`. A planner built with this (`BestOfNPlanner(...,
    policy_first=...)`) waits before each of its network evaluations while a turn runs, so at most the one
    evaluation in flight overlaps a chunk; on a GPU the two queue their kernels on their own CUDA streams, the
    policy's with the highest priority, so the scheduler runs a chunk's kernels ahead of queued planner kernels.
    `planner_waited_s` sums the planner's waits. For eager torch engines: a compiled engine with CUDA graphs
    replays static buffers and needs its own compiled instance per thread.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        self._idle = threading.Condition()
        self._turns = 0
        self.planner_waited_s = 0.0
        self.policy_stream = self.planner_stream = None
        if device.type == "cuda":
            least, greatest = torch.cuda.Stream.priority_range()
            self.policy_stream = torch.cuda.Stream(device, priority=greatest)
            self.planner_stream = torch.cuda.Stream(device, priority=least)

    @contextlib.contextmanager
    def policy_turn(self) -> Iterator[None]:
        """Around the policy's chunk (encode, sample, decode): the planner starts no network evaluation meanwhile."""
        with self._idle:
            self._turns += 1
        try:
            with self._stream(self.policy_stream):
                yield
        finally:
            with self._idle:
                self._turns -= 1
                if not self._turns:
                    self._idle.notify_all()

    @contextlib.contextmanager
    def planner_work(self) -> Iterator[None]:
        """Around a plan: its kernels go to the low-priority stream."""
        with self._stream(self.planner_stream):
            yield

    def wait_for_policy(self) -> None:
        """The planner, before each network evaluation: returns once no policy turn runs."""
        with self._idle:
            if not self._turns:
                return
            t0 = time.perf_counter()
            self._idle.wait_for(lambda: not self._turns)
            self.planner_waited_s += time.perf_counter() - t0

    @staticmethod
    @contextlib.contextmanager
    def _stream(stream) -> Iterator[None]:
        if stream is None:
            yield
            return
        stream.wait_stream(torch.cuda.current_stream(stream.device))   # inputs queued before the switch
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(stream.device).wait_stream(stream)   # and outputs seen after it


class _PolicyFirstDenoiser(Denoiser):
    """The planner's view of a denoiser shared with the policy: each evaluation waits for the policy's turn."""

    def __init__(self, inner: Denoiser, policy_first: PolicyFirst) -> None:
        self.inner, self.policy_first = inner, policy_first
        self.name, self.device = inner.name, inner.device

    def predict_x0(self, *args) -> torch.Tensor:
        self.policy_first.wait_for_policy()
        return self.inner.predict_x0(*args)


class BestOfNPlanner:
    """Scores N action candidates (seeds base..base+N-1) and returns the best chunk.

    Per candidate with seed s: an action sample (policy model), a world-model ensemble (seeds
    s..s+K-1, steps linspace(1, max, K)) and for each world-model sample a value ensemble (seeds
    s..s+E-1, steps linspace(1, max, E)) with the planning model; the K·E values are aggregated. All
    candidates of a batch, and all ensemble members with the same step count, share one network call.
    """

    def __init__(self, policy: CosmosPolicy, config: PlannerConfig = PlannerConfig(),
                 clock: Callable[[], float] = time.monotonic, policy_first: PolicyFirst | None = None) -> None:
        if policy_first is not None:   # the same networks, reached through evaluations that yield to the policy
            policy = policy.with_config()
            policy.denoiser = _PolicyFirstDenoiser(policy.denoiser, policy_first)
            if policy.planning_denoiser is not None:
                policy.planning_denoiser = _PolicyFirstDenoiser(policy.planning_denoiser, policy_first)
        self.policy = policy
        self.config = config
        self.policy_first = policy_first
        self._clock = clock

    # --- one batched ensemble stage ----------------------------------------------------------------
    def _grouped(self, call, jobs: list[tuple[int, torch.Tensor, list[int]]], proprio: torch.Tensor | None):
        """Run jobs (steps, prior rows, seeds) with one call per distinct step count; results in job order."""
        results: list = [None] * len(jobs)
        by_steps: dict[int, list[int]] = defaultdict(list)
        for i, (steps, _, _) in enumerate(jobs):
            by_steps[steps].append(i)
        for steps, idxs in by_steps.items():
            prior = torch.cat([jobs[i][1] for i in idxs])
            seeds = [s for i in idxs for s in jobs[i][2]]
            prop = None if proprio is None else proprio.repeat(len(idxs), 1)
            out = call(prior, seeds, steps, prop)
            for i, part in zip(idxs, torch.split(out, [len(jobs[i][2]) for i in idxs])):
                results[i] = part
        return results

    def _score_group(self, cond: ConditioningCache, indices: list[int], seeds: list[int],
                     check: Callable[[], None], timings: dict[str, float]) -> _Group:
        cfg, pol = self.config, self.policy

        def timed(key, fn, *args, **kwargs):
            t0 = self._clock()
            out = fn(*args, **kwargs)
            timings[key] = timings.get(key, 0.0) + self._clock() - t0
            check()
            return out

        def wm_call(prior, s, steps, prop):
            return pol.predict_future(cond, prior, s, steps, proprio_B_D=prop)

        def value_call(prior, s, steps, prop):
            return pol.value(cond, prior, s, steps, mode=cfg.value_mode, proprio_B_D=prop)

        first_action = None
        first_futures: list[torch.Tensor] = []
        values_by_depth: list[np.ndarray] = []   # each (n,)
        raw_by_depth: list[np.ndarray] = []      # each (n, ensemble)
        prior, proprio = None, None
        for depth in range(cfg.search_depth):
            action = timed("actions", pol.sample_actions, cond, seeds, cfg.action_steps,
                           prior_B_C_T_H_W=prior, proprio_B_D=proprio)
            if cfg.value_mode == "Q(s,a)":
                futures = []
                jobs = [(steps, action, [s + j for s in seeds]) for j, steps in enumerate(cfg.value_steps)]
            else:
                wm_jobs = [(steps, action, [s + k for s in seeds]) for k, steps in enumerate(cfg.world_model_steps)]
                futures = timed("world_model", self._grouped, wm_call, wm_jobs, proprio)
                jobs = [(steps, fut, [s + j for s in seeds])
                        for fut in futures for j, steps in enumerate(cfg.value_steps)]
            vals = timed("value", self._grouped, value_call, jobs, proprio)
            raw_n_E = torch.stack(vals, dim=1).double().cpu().numpy()          # (n, ensemble)
            raw_by_depth.append(raw_n_E)
            values_by_depth.append(aggregate_values(raw_n_E.T, cfg.aggregation, cfg.success_threshold, cfg.lcb_beta))
            if depth == 0:
                first_action, first_futures = action, futures
            if depth + 1 < cfg.search_depth:
                prior, proprio = next_state_prior(pol, futures[-1])
        depth_vals = np.stack(values_by_depth)                                  # (depth, n)
        final = depth_vals[-1] if cfg.depth_aggregation == "last" else depth_vals.mean(0)
        scores = [
            CandidateScore(index=i, seed=s, value=float(final[k]), values_by_depth=depth_vals[:, k].tolist(),
                           raw_values=np.stack([r[k] for r in raw_by_depth]))
            for k, (i, s) in enumerate(zip(indices, seeds))
        ]
        return _Group(scores, first_action, first_futures)

    # --- the plan ----------------------------------------------------------------------------------
    @torch.no_grad()
    def plan(self, obs: Observation | ConditioningCache, base_seed: int = 0, deadline: float | None = None,
             num_candidates: int | None = None) -> PlanResult:
        """Best of N candidates; the base-seed candidate wins unless another is strictly better.

        `deadline` (seconds from this call, default config.deadline) is checked between network
        calls: once it has passed, the best fully scored candidate so far is returned with
        `timed_out=True` and `num_scored`; it never raises for a missed deadline.
        """
        if self.policy_first is None:
            return self._plan(obs, base_seed, deadline, num_candidates)
        with self.policy_first.planner_work():
            return self._plan(obs, base_seed, deadline, num_candidates)

    def _plan(self, obs: Observation | ConditioningCache, base_seed: int, deadline: float | None,
              num_candidates: int | None) -> PlanResult:
        cfg, pol = self.config, self.policy
        start = self._clock()
        deadline = cfg.deadline if deadline is None else deadline
        n = num_candidates or cfg.num_candidates
        seeds_all = [base_seed + i for i in range(n)]   # always distinct, whatever the batch size
        timings: dict[str, float] = {}

        def check() -> None:
            if deadline is not None and self._clock() - start > deadline:
                raise _DeadlinePassed

        scored: list[CandidateScore] = []
        best: tuple[CandidateScore, _Group, int] | None = None
        timed_out = False
        try:
            if isinstance(obs, ConditioningCache):
                cond = obs
            else:
                if self.policy_first is not None:
                    self.policy_first.wait_for_policy()
                t0 = self._clock()
                cond = pol.encode_observation(obs)
                timings["encode"] = self._clock() - t0
                check()
            for g in range(0, n, cfg.batch_candidates):
                idx = list(range(g, min(n, g + cfg.batch_candidates)))
                group = self._score_group(cond, idx, [seeds_all[i] for i in idx], check, timings)
                for row, score in enumerate(group.scores):
                    scored.append(score)
                    if best is None or score.value > best[0].value:  # strict: earlier (base) seeds win ties
                        best = (score, group, row)
        except _DeadlinePassed:
            timed_out = True
            log.info("planner deadline %.3f s passed after %d of %d candidates", deadline, len(scored), n)

        chunk = None
        if best is not None:
            t0 = self._clock()
            chunk = self._chunk(cond, *best)
            timings["decode"] = self._clock() - t0
        timings["total"] = self._clock() - start
        if chunk is not None:
            chunk.timings = dict(timings)
        return PlanResult(chunk=chunk, best_index=None if best is None else best[0].index, num_scored=len(scored),
                          num_candidates=n, timed_out=timed_out, candidates=scored, timings=timings)

    def _chunk(self, cond: ConditioningCache, score: CandidateScore, group: _Group, row: int) -> ActionChunk:
        pol = self.policy
        action = group.action_latent[row:row + 1]
        futures = [f[row:row + 1] for f in group.future_latents]
        state_latent = futures[-1] if futures else action
        images = None
        if self.config.return_future_images:
            # The reference averages the decoded images of the world-model ensemble ("average" scheme).
            decoded = [pol.decode_future_images(cond, lat)[0] for lat in (futures or [action])]
            images = {cam: np.mean([d[cam].astype(np.float64) for d in decoded], axis=0).astype(np.uint8)
                      for cam in decoded[0]}
        return ActionChunk(
            actions=pol.actions_from_latent(action)[0], value=score.value, timestamp=cond.timestamp,
            seed=score.seed, num_steps=self.config.action_steps,
            future_proprio=pol.future_proprio_from_latent(state_latent)[0], future_images=images,
        )


def planning_value_mode(checkpoint) -> str:
    """The value mode (a VALUE_MODES key) a checkpoint directory's network was trained for.

    Its recorded training config names the value role: `value_v_s` for a planning fine-tune (V(s')),
    `value_v_sas` for the base recipe (V(s,a,s')). A directory that records no training (a converted
    release) is taken as the reference's planning model: V(s'). Asking a network for a value role it never
    trained conditions it on frames it has not learned to read, and its values then rank nothing.
    """
    import json
    from pathlib import Path

    from cosmos_policy_core.checkpoint import CONFIG_FILE
    from cosmos_policy_core.errors import CheckpointError

    path = Path(checkpoint) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {CONFIG_FILE}; pass a checkpoint directory") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e})") from e
    metadata = config.get("metadata") if isinstance(config, dict) else None
    train = (metadata or {}).get("train_config") if isinstance(metadata, dict) else None
    if not isinstance(train, dict):
        return "V(s')"
    role = (train.get("samples") or {}).get("value_role", "value_v_sas")
    modes = {r: m for m, r in VALUE_MODES.items()}
    if role not in modes:
        raise CheckpointError(f"{path}: unknown value role {role!r} in metadata.train_config.samples")
    shares = ((metadata.get("data") or {}).get("role_shares") or {})
    if shares.get(role) == 0:
        log.warning("%s never trained its value role %s (no value samples): its values will not rank candidates; "
                    "fine-tune a planning checkpoint on rollouts (docs/training.md)", path.parent, role)
    return modes[role]


__all__ = ["BestOfNPlanner", "PlannerConfig", "PolicyFirst", "PlanResult", "CandidateScore", "aggregate_values",
           "ensemble_steps", "next_state_prior", "planning_value_mode", "AGGREGATIONS"]
