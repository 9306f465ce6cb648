"""Closed-loop evaluation in MuJoCo: CosmosPolicy (optionally best-of-N planning) through the ROS executor's ChunkExecutor.

Owns the simulated 25 Hz loop on a simulated clock, success counting with a Wilson 95 % interval, the JSON report, a
rollout GIF with predicted future frames and the value over time, and recording the rollouts as a dataset.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cosmos_policy_core.checkpoint import ENSEMBLE_QUERY_STEPS, EXECUTION_MODES, DeploySettings
from cosmos_policy_core.data.episode import Episode
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.runtime.execution import ChunkExecutor, ExecutorConfig, TimedChunk
from cosmos_policy_core.runtime.jpeg import check_quality, jpeg_round_trip

log = logging.getLogger(__name__)

CONTROL_HZ = int(aloha.CONTROL_HZ)
STEP_NS = int(1e9 / CONTROL_HZ)


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for zero trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ConfigError(f"successes {successes} not in 0..{trials}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # The bounds are exactly 0 / 1 at 0 / n successes; the formula leaves rounding dust there.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation. Fields left None take the checkpoint's deploy settings (`resolved`)."""

    task: str = "transfer_cube"
    episodes: int = 50
    seed: int = 0                       # episode i uses object seed `seed + i` and policy seeds from it
    num_steps: int | None = None        # denoising steps per chunk
    execution: str | None = None        # whole_chunks | temporal_ensemble
    execute_steps: int | None = None    # actions played before re-querying (the reference: all 50)
    # Inference latency in control steps, as on the robot: the chunk of the observation at step q arrives
    # at q + latency_steps, stamped q, so the executor plays it from index latency_steps while the previous
    # chunk plays on. 0: the sim clock stops while the model thinks (the reference's blocking deploy).
    # The ROS policy node with trigger_remaining_steps R and latency L plays execute_steps = 50 - R + L.
    latency_steps: int = 0
    # Temporal ensembling's decay k (ExecutorConfig.ensemble_decay): every live chunk averaged, weight
    # exp(-k i), i = 0 for the oldest.
    ensemble_decay: float | None = None
    max_steps: int | None = None        # control steps per episode (None: the task's 25 Hz demo length)
    render_size: int = 224              # camera render size; the policy resizes to its own image_size
    planner_candidates: int = 0         # > 1: best-of-N planning with world model + value
    # The fine-tuned world model + value checkpoint the planner scores with (None: the policy's own network)
    # and the value it asks for (None: the role that checkpoint was trained for, `planning_value_mode`).
    # Planning runs at every query: under temporal ensembling each query's chosen chunk joins the ensemble,
    # so V(s') scores the future of a chunk the robot only partly follows.
    planning_checkpoint: str | None = None
    value_mode: str | None = None
    # The planner's ensembles (the planner node's parameters of the same names; None: PlannerConfig's, the
    # reference's 3 world-model and 5 value samples). Each world-model sample gets its value ensemble.
    world_model_samples: int | None = None
    value_samples: int | None = None
    stop_on_success: bool = True
    # > 0: also count a held success, the maximum reward at the end of this many consecutive control steps
    # (gym-aloha's success is the maximum at any one 50 Hz physics step). Episodes then run on past their
    # first success, until the hold or their end; the success count is unchanged (the rollout up to the
    # first success is the same).
    hold_steps: int = 0
    # 1..100: every camera frame passes a JPEG encode + decode at this quality before the policy sees it, as
    # a remote policy receives <camera>/image_raw/compressed (at the render size). None: raw frames.
    jpeg_quality: int | None = None
    # What runs the networks (engines.resolve.resolve_engine): engine torch / compile / onnx / tensorrt, device
    # (cpu, cuda, auto), dtype (None: per engine and device), export_dir (onnx / tensorrt; None: <checkpoint>/export).
    engine: str = "torch"
    device: str = "cpu"
    dtype: str | None = None
    export_dir: str | None = None
    # Clamp each normalized action to [-1, 1], the range of the checkpoint's statistics (PolicyConfig).
    clip_actions: bool = True

    def __post_init__(self) -> None:
        if self.episodes <= 0:
            raise ConfigError(f"episodes must be positive, got {self.episodes}")
        if self.hold_steps < 0:
            raise ConfigError(f"hold_steps must be >= 0, got {self.hold_steps}")
        if self.jpeg_quality is not None:
            check_quality(self.jpeg_quality)
        if self.planning_checkpoint is not None and self.planner_candidates <= 1:
            raise ConfigError("a planning checkpoint is used by the planner only: pass planner_candidates > 1 "
                              "(--planner-candidates N) with it")
        for key in ("world_model_samples", "value_samples"):
            value = getattr(self, key)
            if value is not None and (value < 1 or self.planner_candidates <= 1):
                raise ConfigError(f"{key} sets the planner's ensemble: pass planner_candidates > 1 with it and a "
                                  f"value >= 1, got {value}")
        if self.execution is not None and self.execution not in EXECUTION_MODES:
            raise ConfigError(f"execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.execute_steps is not None and not 1 <= self.execute_steps <= 50:
            raise ConfigError(f"execute_steps must be in 1..50, got {self.execute_steps}")
        # One inference at a time, as in the ROS node: the next starts when the last has arrived at the latest.
        execute = self.execute_steps if self.execute_steps is not None else 50
        if not 0 <= self.latency_steps <= execute or self.latency_steps + execute > 50:
            raise ConfigError(
                f"latency_steps must be in 0..execute_steps and leave execute_steps of the 50-step chunk "
                f"to play (latency + execute <= 50), got latency {self.latency_steps}, execute {execute}")

    def resolved(self, deploy: DeploySettings) -> "EvalConfig":
        """This config with every unset execution field taken from `deploy`.

        An explicit --ensemble-decay means temporal ensembling unless the execution is given as well.
        """
        execution = self.execution or ("temporal_ensemble" if self.ensemble_decay is not None else deploy.execution)
        ensembling = execution == "temporal_ensemble"
        if self.execute_steps is not None:
            execute = self.execute_steps
        elif execution == deploy.execution:
            execute = deploy.query_every_steps
        else:  # switched away from the checkpoint's mode: whole chunks play all 50, ensembling queries often
            execute = ENSEMBLE_QUERY_STEPS if ensembling else 50
        if ensembling:
            decay = self.ensemble_decay if self.ensemble_decay is not None else deploy.ensemble_decay
        else:
            decay = None
        return replace(self, execution=execution, execute_steps=min(execute, 50), ensemble_decay=decay,
                       num_steps=self.num_steps or deploy.num_steps)


@dataclass
class EpisodeResult:
    index: int
    seed: int
    success: bool
    max_reward: int
    steps: int
    queries: int
    seconds: float
    values: list[float] = field(default_factory=list)   # predicted value of each chunk
    # Control steps spent at each reward level 0..4 (max_reward alone counts a cube nudged off the table
    # for one step as lifted; this tells that apart from a held one).
    reward_steps: list[int] = field(default_factory=list)
    # Longest run of consecutive control steps at the maximum reward, up to where the episode stopped (a
    # held success where it reaches EvalConfig.hold_steps > 0).
    longest_hold: int = 0


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    episodes: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    per_episode: list[EpisodeResult]
    config: dict
    seconds: float
    # With EvalConfig.hold_steps > 0: episodes whose maximum reward held that many control steps, and the
    # rate and Wilson interval of those; None otherwise.
    held_successes: int | None = None
    held_success_rate: float | None = None
    held_ci95: tuple[float, float] | None = None
    # With a record directory: where the rollouts went and how many were written / skipped.
    rollouts: dict | None = None
    # Seeds asked for but not run: the run was interrupted (Ctrl-C) after the episodes it reports.
    unfinished_seeds: list[int] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        out["held_ci95"] = None if self.held_ci95 is None else list(self.held_ci95)
        out["max_rewards"] = [e.max_reward for e in self.per_episode]
        return out


class GifRecorder:
    """Frames of one rollout: real cameras (top row) beside the latest chunk's predicted future frames (bottom),
    and under them a strip plotting the predicted value of every chunk so far (0 at the bottom, 1 at the top)."""

    STRIP_HEIGHT = 40

    def __init__(self, tile: int = 112, every: int = 2, horizon: int | None = None):
        self.tile, self.every, self.frames = tile, every, []
        self.horizon = horizon           # control steps the strip's width stands for (run_episode sets it)
        self.values: list[tuple[int, float]] = []   # (step of the query, predicted value)

    def _tile(self, img: np.ndarray | None) -> np.ndarray:
        from PIL import Image

        if img is None:
            return np.zeros((self.tile, self.tile, 3), np.uint8)
        return np.asarray(Image.fromarray(img).resize((self.tile, self.tile), Image.BILINEAR))

    def value_strip(self, step: int, width: int) -> np.ndarray:
        """(STRIP_HEIGHT, width, 3) uint8 plot of the values up to `step`: a step line, value 0.5 dotted."""
        from PIL import Image, ImageDraw

        h = self.STRIP_HEIGHT
        strip = Image.new("RGB", (width, h), (24, 24, 24))
        draw = ImageDraw.Draw(strip)
        horizon = max(self.horizon or step + 1, 1)

        def xy(t: int, v: float) -> tuple[float, float]:
            return (width - 1) * min(t, horizon) / horizon, (h - 3) * (1.0 - min(max(v, 0.0), 1.0)) + 1

        for x in range(0, width, 4):
            draw.point((x, xy(0, 0.5)[1]), fill=(90, 90, 90))
        points = []
        shown = [(t, v) for t, v in self.values if t <= step]
        for i, (t, v) in enumerate(shown):
            end = shown[i + 1][0] if i + 1 < len(shown) else step
            points += [xy(t, v), xy(end, v)]
        if len(points) >= 2:
            draw.line(points, fill=(80, 200, 120), width=2)
        draw.line([xy(step, 0.0), xy(step, 1.0)], fill=(200, 200, 200))
        return np.asarray(strip)

    def add(self, step: int, images: dict, predicted: dict | None, value: float | None = None) -> None:
        """Record the frame of control step `step`; `value` is the chunk's value when a chunk was queried at it."""
        if value is not None:
            self.values.append((step, float(value)))
        if step % self.every:
            return
        top = np.concatenate([self._tile(images.get(c)) for c in aloha.CAMERAS], axis=1)
        bottom = np.concatenate([self._tile(None if predicted is None else predicted.get(c)) for c in aloha.CAMERAS],
                                axis=1)
        self.frames.append(np.concatenate([top, bottom, self.value_strip(step, top.shape[1])], axis=0))

    def save(self, path: str | Path, fps: int = CONTROL_HZ) -> Path | None:
        from PIL import Image

        if not self.frames:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(f) for f in self.frames]
        images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                       duration=int(1000 * self.every / fps))
        return path


class RolloutRecorder:
    """One episode as it was executed, in the dataset format (data/episode.py): at every control step the
    observed joints and camera frames (at the render size) and the command the executor sent."""

    def __init__(self) -> None:
        self.qpos: list[np.ndarray] = []
        self.action: list[np.ndarray] = []
        self.images: dict[str, list[np.ndarray]] = {}

    def add(self, obs: dict, command: np.ndarray) -> None:
        self.qpos.append(np.asarray(obs["qpos"], np.float32).copy())
        self.action.append(np.asarray(command, np.float32).copy())
        for cam, image in obs["images"].items():
            self.images.setdefault(cam, []).append(np.asarray(image, np.uint8).copy())

    def episode(self, task: str, success: bool, attrs: dict) -> Episode:
        return Episode(qpos=np.stack(self.qpos), action=np.stack(self.action),
                       images={cam: np.stack(frames) for cam, frames in self.images.items()},
                       fps=float(CONTROL_HZ), task=task, success=bool(success), sim=True, attrs=dict(attrs))


def run_episode(policy, env, executor_config: ExecutorConfig, cfg: EvalConfig, index: int, planner=None,
                gif: GifRecorder | None = None, recorder: RolloutRecorder | None = None) -> EpisodeResult:
    """One seeded episode: query a chunk every `execute_steps`, play it through the executor at 25 Hz.

    With `latency_steps` L, each chunk reaches the executor L steps after its observation (stamped with
    the observation's time), as a published chunk reaches the ROS executor node. With a planner, every query
    is a best-of-N plan. `recorder` receives every step's observation and command.
    """
    from cosmos_policy_core.runtime.policy import Observation
    from cosmos_policy_core.sim.tasks import MAX_REWARD, get_task

    if cfg.execute_steps is None:  # not resolved against a checkpoint: the reference deployment
        cfg = cfg.resolved(DeploySettings())
    seed = cfg.seed + index
    task = get_task(cfg.task)
    max_steps = cfg.max_steps or task.episode_len_25hz
    if gif is not None and gif.horizon is None:
        gif.horizon = max_steps
    executor = ChunkExecutor(executor_config)
    obs = env.reset(seed=seed)
    start = time.perf_counter()
    queries, values, predicted = 0, [], None
    pending: list[tuple[int, TimedChunk]] = []       # (arrival step, chunk) of chunks still "computing"
    reward_steps = [0] * (MAX_REWARD + 1)
    run = longest_hold = 0
    step = 0
    for step in range(max_steps):
        now_ns = step * STEP_NS
        executor.observe(obs["qpos"], now_ns)
        queried = None
        if step % cfg.execute_steps == 0:
            images = obs["images"] if cfg.jpeg_quality is None else {
                cam: jpeg_round_trip(image, cfg.jpeg_quality) for cam, image in obs["images"].items()}
            observation = Observation(images=images, proprio=obs["qpos"], task=task.description,
                                      timestamp=now_ns / 1e9)
            policy_seed = seed * 1000 + queries
            if planner is not None:
                chunk = planner.plan(observation, base_seed=policy_seed).chunk
            else:
                chunk = policy.act(observation, seed=policy_seed, num_steps=cfg.num_steps,
                                   return_future_images=gif is not None)
            queries += 1
            values.append(float(chunk.value))
            queried = values[-1]
            predicted = chunk.future_images
            # Stamped with its observation's time; the simulated clock stops while the model thinks and
            # the chunk arrives latency_steps later.
            pending.append((step + cfg.latency_steps, TimedChunk(np.asarray(chunk.actions, float), now_ns)))
        while pending and pending[0][0] <= step:
            verdict = executor.submit(pending.pop(0)[1], now_ns)
            if verdict != "accepted":
                log.warning("episode %d step %d: executor rejected the chunk (%s)", index, step, verdict)
        tick = executor.tick(now_ns)
        command = tick.command if tick.command is not None else obs["qpos"]
        if gif is not None:
            gif.add(step, obs["images"], predicted, queried)
        if recorder is not None:
            recorder.add(obs, command)
        obs, reward = env.step(command)
        reward_steps[int(reward)] += 1
        run = run + 1 if reward >= MAX_REWARD else 0
        longest_hold = max(longest_hold, run)
        if cfg.hold_steps > 0:
            if longest_hold >= cfg.hold_steps:
                break
        elif cfg.stop_on_success and env.success:
            break
    return EpisodeResult(index=index, seed=seed, success=bool(env.success), max_reward=int(env.max_reward),
                         steps=step + 1, queries=queries, seconds=round(time.perf_counter() - start, 2),
                         values=values, reward_steps=reward_steps, longest_hold=longest_hold)


def _load(checkpoint: Path, cfg: EvalConfig, future_images: bool):
    """(policy, planner or None) of a checkpoint, with its deploy settings and cfg's overrides."""
    from cosmos_policy_core.runtime.policy import CosmosPolicy, policy_config_for

    steps = {} if cfg.num_steps is None else {"num_steps": cfg.num_steps}
    config = policy_config_for(checkpoint, clip_actions=cfg.clip_actions, **steps)
    policy = CosmosPolicy.from_checkpoint(checkpoint, engine=cfg.engine, device=cfg.device, dtype=cfg.dtype,
                                          export_dir=cfg.export_dir, config=config,
                                          planning_checkpoint=cfg.planning_checkpoint)
    planner = None
    if cfg.planner_candidates > 1:
        from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig, planning_value_mode

        value_mode = cfg.value_mode or planning_value_mode(cfg.planning_checkpoint or checkpoint)
        ensembles = {key: getattr(cfg, key) for key in ("world_model_samples", "value_samples")
                     if getattr(cfg, key) is not None}
        planner = BestOfNPlanner(policy, PlannerConfig(num_candidates=cfg.planner_candidates,
                                                       action_steps=cfg.num_steps or policy.config.num_steps,
                                                       value_mode=value_mode, return_future_images=future_images,
                                                       **ensembles))
    return policy, planner


def _executor_config(cfg: EvalConfig) -> ExecutorConfig:
    return ExecutorConfig.aloha(CONTROL_HZ, ensemble_decay=cfg.ensemble_decay)


# One policy + one sim per worker process (set by _worker_init, used by _worker_episode).
_WORKER: dict = {}


def _worker_init(checkpoint: str, cfg: EvalConfig, threads: int, future_images: bool) -> None:
    import torch

    from cosmos_policy_core.sim.env import AlohaSimEnv

    torch.set_num_threads(threads)
    policy, planner = _load(Path(checkpoint), cfg, future_images)
    env = AlohaSimEnv(cfg.task, cfg.render_size, cfg.render_size, control_hz=CONTROL_HZ)
    env.__enter__()  # closed when the worker process exits
    _WORKER.update(policy=policy, planner=planner, env=env, cfg=cfg, checkpoint=checkpoint)


def _worker_episode(index: int, gif_path: str | None, record: bool) -> tuple[EpisodeResult, Episode | None]:
    w = _WORKER
    gif = GifRecorder() if gif_path is not None else None
    recorder = RolloutRecorder() if record else None
    result = run_episode(w["policy"], w["env"], _executor_config(w["cfg"]), w["cfg"], index, w["planner"], gif,
                         recorder)
    if gif is not None:
        gif.save(gif_path)
    return result, _recorded(recorder, result, w["cfg"], w["checkpoint"])


def _recorded(recorder: RolloutRecorder | None, result: EpisodeResult, cfg: EvalConfig,
              checkpoint: str) -> Episode | None:
    """The recorded episode with what produced it in its attributes (None without a recorder)."""
    from cosmos_policy_core.sim.tasks import get_task

    if recorder is None:
        return None
    attrs = {"source": "cosmos-aloha sim eval", "seed": result.seed, "max_reward": result.max_reward,
             "checkpoint": checkpoint, "planner_candidates": cfg.planner_candidates,
             "planning_checkpoint": cfg.planning_checkpoint or "", "execution": cfg.execution or ""}
    return recorder.episode(get_task(cfg.task).description, result.success, attrs)


class _RolloutSink:
    """Hands recorded episodes to a DatasetWriter in episode order (episode i as episode_i.hdf5), however the
    worker processes finish; nothing appears in the directory until `commit`."""

    def __init__(self, out: Path, checkpoint: Path, planning_checkpoint: str | None) -> None:
        from cosmos_policy_core.data.episode import episode_paths
        from cosmos_policy_core.data.writer import DatasetWriter

        if out.exists() and out.is_dir() and episode_paths(out):
            raise ConfigError(f"--record-rollouts {out} already holds episodes; record into a new directory "
                              "(`train --rollouts DIR` reads the episodes of every directory below DIR)")
        inputs = [checkpoint] + ([Path(planning_checkpoint)] if planning_checkpoint else [])
        self.writer = DatasetWriter(out, inputs=inputs, fps=float(CONTROL_HZ), compress=True)
        self.waiting: dict[int, tuple[EpisodeResult, Episode]] = {}
        self.next = 0

    def put(self, result: EpisodeResult, episode: Episode) -> None:
        from cosmos_policy_core.data.writer import ConvertedEpisode

        self.waiting[result.index] = (result, episode)
        while self.next in self.waiting:
            r, ep = self.waiting.pop(self.next)
            self.writer.add(ConvertedEpisode(ep, source=f"sim eval episode {r.index} (seed {r.seed})",
                                             source_steps=len(ep)))
            self.next += 1

    def commit(self) -> dict:
        report = self.writer.commit()
        return {"dir": str(self.writer.out), "written": len(report.episodes), "skipped": len(report.skipped),
                "successes": sum(e.success for e in report.episodes)}


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvalConfig, *, gif_path: str | Path | None = None,
                        progress: bool = True, workers: int = 1, record_dir: str | Path | None = None) -> EvalReport:
    """Closed-loop success rate of a checkpoint directory in the joint-space MuJoCo sim.

    `record_dir`: every episode, success or failure, is written there as a dataset (JPEG frames at the render
    size, attrs success, task and seed) through a DatasetWriter, so an interrupted run leaves it as it was.

    `workers` > 1 runs episodes in that many processes, each with its own sim and policy and
    cpu_count // workers torch threads: several processes that each keep the default thread count
    oversubscribe the cores, and on this project's 2-core machine that made episodes ~15x slower.
    Episode i is the same (seed + i, policy seeds) whichever process runs it.
    """
    import multiprocessing as mp
    import os

    from tqdm import tqdm

    from cosmos_policy_core.sim.env import AlohaSimEnv

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    checkpoint = Path(checkpoint)
    cfg = cfg.resolved(DeploySettings.from_checkpoint(checkpoint))
    if cfg.planner_candidates > 1 and cfg.value_mode is None:
        from cosmos_policy_core.runtime.planner import planning_value_mode

        cfg = replace(cfg, value_mode=planning_value_mode(cfg.planning_checkpoint or checkpoint))
    sink = None if record_dir is None else _RolloutSink(Path(record_dir), checkpoint, cfg.planning_checkpoint)
    start = time.perf_counter()
    results: list[EpisodeResult] = []
    bar = tqdm(total=cfg.episodes, desc=f"sim eval {cfg.task}", unit="ep", disable=not progress)

    failures: list[BaseException] = []

    def record(done: tuple[EpisodeResult, Episode | None]) -> None:
        result, episode = done
        if sink is not None:
            try:
                sink.put(result, episode)
            except BaseException as e:  # raised in the pool's result thread it would leave job.get() waiting
                failures.append(e)
        results.append(result)
        k = sum(r.success for r in results)
        bar.update(1)
        bar.set_postfix(success=f"{k}/{len(results)}", reward=result.max_reward)

    workers = min(workers, cfg.episodes)
    rollouts = None
    try:
        if workers == 1:
            policy, planner = _load(checkpoint, cfg, gif_path is not None)
            executor_config = _executor_config(cfg)
            with AlohaSimEnv(cfg.task, cfg.render_size, cfg.render_size, control_hz=CONTROL_HZ) as env:
                for i in range(cfg.episodes):
                    gif = GifRecorder() if (gif_path is not None and i == 0) else None
                    recorder = RolloutRecorder() if sink is not None else None
                    result = run_episode(policy, env, executor_config, cfg, i, planner, gif, recorder)
                    record((result, _recorded(recorder, result, cfg, str(checkpoint))))
                    if failures:
                        raise failures[0]
                    if gif is not None:
                        gif.save(gif_path)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            gif = None if gif_path is None else str(gif_path)
            ctx = mp.get_context("spawn")  # no fork of a process holding torch threads or a GL context
            with ctx.Pool(workers, initializer=_worker_init,
                          initargs=(str(checkpoint), cfg, threads, gif is not None)) as pool:
                jobs = [pool.apply_async(_worker_episode, (i, gif if i == 0 else None, sink is not None),
                                         callback=record)
                        for i in range(cfg.episodes)]
                for i in range(len(jobs)):
                    jobs[i].get()  # re-raises a worker's exception here
                    # A finished job keeps its result, the recorded episode's frames with it (~90 MB at 224²):
                    # kept for every episode, a few hundred fill the memory.
                    jobs[i] = None
        if failures:
            raise failures[0]
        rollouts = None if sink is None else sink.commit()
    except KeyboardInterrupt:
        if not results:
            raise
        # Hours of finished episodes are kept: the report holds them and names the seeds still to run (their
        # rollouts are not kept: a record directory appears whole or not at all).
    finally:
        if sink is not None:
            sink.writer.abort()   # after a commit: nothing; after an error or Ctrl-C: the directory as it was
    bar.close()
    results.sort(key=lambda r: r.index)
    done = {r.index for r in results}
    unfinished = [cfg.seed + i for i in range(cfg.episodes) if i not in done]
    k = sum(r.success for r in results)
    config = {**asdict(cfg), "workers": workers}
    held = {}
    if cfg.hold_steps > 0:
        h = sum(r.longest_hold >= cfg.hold_steps for r in results)
        held = dict(held_successes=h, held_success_rate=h / len(results), held_ci95=wilson_interval(h, len(results)))
    return EvalReport(task=cfg.task, checkpoint=str(checkpoint), episodes=len(results), successes=k,
                      success_rate=k / len(results), ci95=wilson_interval(k, len(results)), per_episode=results,
                      config=config, seconds=round(time.perf_counter() - start, 1), rollouts=rollouts,
                      unfinished_seeds=unfinished, **held)


__all__ = ["wilson_interval", "EvalConfig", "EpisodeResult", "EvalReport", "GifRecorder", "RolloutRecorder",
           "run_episode", "evaluate_checkpoint"]
