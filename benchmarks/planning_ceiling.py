"""How much could best-of-N raise success with this policy's candidates? Best-of-N judged by the sim itself.

Whole-chunk episodes (the reference's planning mode: one plan per executed 50-step chunk). At every query the
planner's N candidates (seeds base + i, as `BestOfNPlanner` draws them; candidate 0 is the chunk the policy alone
would play) are each tried in a copy of the sim (`AlohaSimEnv.snapshot`): the candidate is played, then the
policy's own chunks with other seeds to the end of the episode. The candidate whose future succeeds is executed
(ties: the higher reward reached, then the lower index). That is best-of-N with a perfect world model and a
one-sample V(s') of the policy's own future: the most a learned world model and value could gain with these
candidates. The same seeds without planning run through `sim eval`'s own loop.

With `--planning-checkpoint P`, the learned planner (`BestOfNPlanner`, the same candidates: seeds base + i, sampled
together) also values every query's candidates; the judge's choice is still the one played. Where the candidates'
futures differ, its choice is compared with the judge's: how often it picks a candidate whose future succeeds, against
chance and against candidate 0.

With `--record-queries DIR`, every judged query is written to DIR (one .npz: the observation, the candidate chunks,
and each candidate's tried future): labels of which of several actions from one state succeed, for training or
scoring a value of (state, candidate) outside this benchmark.

    MUJOCO_GL=egl python benchmarks/planning_ceiling.py --checkpoint models/aloha_sim_transfer_cube_small \
        --episodes 100 --seed 40000 --candidates 4 --workers 2 --out planning_ceiling

Writes plain.json and ceiling.json (the `sim eval --json` report form, so `cosmos-aloha sim compare` reads them)
and summary.json (the paired comparison, how often the candidates' futures disagreed, the machine, the times).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cosmos_policy_core.runtime.rollout import EpisodeResult

# One query per executed chunk, played whole, on a clock that stops while the model thinks.
CHUNK = 50
# Seeds of the policy's chunks inside a lookahead: apart from every seed the real episode or its candidates use.
LOOKAHEAD_SEED = 1 << 31   # + episode seed * 1000 + query: under 2**32 for seeds below 2,000,000
REPEAT_SEEDS = 100         # repeat r (at most 9) adds 100 * r: inside the seed's block of 1000 (under 100 queries)


@dataclass
class Decision:
    step: int
    chosen: int
    futures: list[tuple[bool, int]]     # per candidate: (its future succeeded, highest reward of that future)
    planner_values: list[float] | None = None   # the learned planner's value of each candidate
    planner_choice: int | None = None
    ends: list[int] = field(default_factory=list)   # per candidate: the last control step of its future
    repeats: list[list[bool]] | None = None  # per candidate: did its future succeed again, with other policy seeds


@dataclass
class CeilingEpisode(EpisodeResult):
    """`sim eval`'s episode result, with what the judge saw at each query."""

    decisions: list[Decision] = field(default_factory=list)


def _observation(obs: dict, task: str, now_ns: int):
    from cosmos_policy_core.runtime.policy import Observation

    return Observation(images=obs["images"], proprio=obs["qpos"], task=task, timestamp=now_ns / 1e9)


def _candidates(policy, obs: dict, task: str, now_ns: int, seeds: list[int], num_steps: int):
    """The observation's encode and its candidate chunks, sampled together as the planner samples them (the
    first row is bit for bit the chunk `act` returns for its seed)."""
    cond = policy.encode_observation(_observation(obs, task, now_ns))
    return cond, np.asarray(policy.actions_from_latent(policy.sample_actions(cond, seeds, num_steps)), float)


def _play(env, executor, chunk_at, obs: dict, start: int, max_steps: int, *, render: bool) -> tuple[int, dict]:
    """`run_episode`'s loop from control step `start`: the executor observes, a query step submits
    `chunk_at(step, obs, now_ns)`, the tick's command steps the sim. Stops at success or `max_steps`;
    returns the last step run and its observation. Without `render` only query steps are rendered."""
    from cosmos_policy_core.runtime.execution import TimedChunk
    from cosmos_policy_core.runtime.rollout import STEP_NS

    step = start
    for step in range(start, max_steps):
        now_ns = step * STEP_NS
        executor.observe(obs["qpos"], now_ns)
        if step % CHUNK == 0:
            if not obs["images"]:
                obs = {**obs, "images": env.render()}
            verdict = executor.submit(TimedChunk(chunk_at(step, obs, now_ns), now_ns), now_ns)
            if verdict != "accepted":
                raise RuntimeError(f"step {step}: the executor rejected a chunk ({verdict})")
        tick = executor.tick(now_ns)
        command = tick.command if tick.command is not None else obs["qpos"]
        obs, _ = env.step(command, render=render or (step + 1) % CHUNK == 0)
        if env.success:
            break
    return step, obs


def ceiling_episode(policy, env, executor_config, task, seed: int, candidates: int, num_steps: int,
                    max_steps: int, planner=None, index: int = 0, record: str | None = None,
                    lookaheads: int = 1) -> CeilingEpisode:
    """One episode where each query's chunk is the candidate whose tried future in the sim went best;
    `planner` (a BestOfNPlanner of `candidates`) values the same candidates beside it; with `record` (a
    directory) every query is written there (`record_query`). With `lookaheads` > 1 each candidate's future is
    tried again that many times less one, with other seeds for the policy's chunks; the judge still decides on
    the first (what is played does not change), and the repeats say whether a candidate's outcome is its own or
    the luck of the policy's later samples."""
    from cosmos_policy_core.runtime.execution import ChunkExecutor

    start = time.perf_counter()
    executor = ChunkExecutor(executor_config)
    obs = env.reset(seed=seed)
    queries = 0
    decisions: list[Decision] = []

    def lookahead(chunk: np.ndarray, step: int, obs: dict, now_ns: int, repeat: int = 0) -> tuple[bool, int, int]:
        snap, trial = env.snapshot(), copy.deepcopy(executor)

        def chunk_at(t: int, o: dict, ns: int) -> np.ndarray:
            if t == step:
                return chunk
            own = LOOKAHEAD_SEED + seed * 1000 + REPEAT_SEEDS * repeat + t // CHUNK
            return _candidates(policy, o, task.description, ns, [own], num_steps)[1][0]

        end, _ = _play(env, trial, chunk_at, obs, step, max_steps, render=False)
        outcome = (bool(env.success), int(env.max_reward), end)
        env.restore(snap)
        return outcome

    def choose(step: int, obs: dict, now_ns: int) -> np.ndarray:
        nonlocal queries
        base = seed * 1000 + queries          # run_episode's policy seed; the planner's candidate i is base + i
        cond, chunks = _candidates(policy, obs, task.description, now_ns, [base + i for i in range(candidates)],
                                   num_steps)
        queries += 1
        if candidates == 1:
            return chunks[0]
        tried = [lookahead(c, step, obs, now_ns) for c in chunks]
        futures = [(ok, reward) for ok, reward, _ in tried]
        best = max(range(candidates), key=lambda i: (futures[i], -i))
        decision = Decision(step, best, futures, ends=[end for _, _, end in tried])
        if lookaheads > 1:
            decision.repeats = [[lookahead(c, step, obs, now_ns, r)[0] for r in range(1, lookaheads)] for c in chunks]
        if planner is not None:
            plan = planner.plan(cond, base_seed=base)
            decision.planner_values = [c.value for c in sorted(plan.candidates, key=lambda c: c.index)]
            decision.planner_choice = plan.best_index
        decisions.append(decision)
        if record is not None:
            record_query(Path(record) / f"seed{seed}_step{step:04d}.npz", obs, chunks, decision, seed, task.name)
        return chunks[best]

    step, _ = _play(env, executor, choose, obs, 0, max_steps, render=True)
    return CeilingEpisode(index=index, seed=seed, success=bool(env.success), max_reward=int(env.max_reward),
                          steps=step + 1, queries=queries, seconds=round(time.perf_counter() - start, 2),
                          decisions=decisions)


def record_query(path: Path, obs: dict, chunks: np.ndarray, decision: Decision, seed: int, task: str) -> None:
    """One judged query, labels for a value of (state, candidate): the observation (camera frames and joint
    positions), the candidate chunks (raw joint commands) and each candidate's tried future (succeeded, highest
    reward, last control step; with repeated lookaheads, whether each repeat succeeded), written atomically."""
    from cosmos_policy_core.atomic import write_bytes

    fields = {"qpos": np.asarray(obs["qpos"], np.float64), "actions": np.asarray(chunks, np.float64),
              "success": np.array([ok for ok, _ in decision.futures]),
              "max_reward": np.array([r for _, r in decision.futures]), "end_step": np.array(decision.ends),
              "step": decision.step, "seed": seed, "task": task, "cameras": np.array(sorted(obs["images"])),
              **{f"image_{c}": obs["images"][c] for c in sorted(obs["images"])}}
    if decision.repeats is not None:
        fields["success_repeats"] = np.array(decision.repeats, bool)     # (candidates, lookaheads - 1)
    buf = io.BytesIO()
    np.savez_compressed(buf, **fields)
    write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class LearnedPlanner:
    """The planning checkpoint whose planner values the candidates beside the judge, and its ensembles (None: the
    planner's defaults, the reference's 3 world-model x 5 value samples)."""

    checkpoint: str
    world_model_samples: int | None = None
    value_samples: int | None = None

    def load(self, checkpoint: str, candidates: int, num_steps: int):
        """(policy with this planning checkpoint, BestOfNPlanner over `candidates`)."""
        from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig, planning_value_mode
        from cosmos_policy_core.runtime.policy import CosmosPolicy, policy_config_for

        policy = CosmosPolicy.from_checkpoint(checkpoint, config=policy_config_for(checkpoint, num_steps=num_steps),
                                              planning_checkpoint=self.checkpoint)
        ensembles = {k: getattr(self, k) for k in ("world_model_samples", "value_samples") if getattr(self, k)}
        config = PlannerConfig(num_candidates=candidates, batch_candidates=candidates, action_steps=num_steps,
                               value_mode=planning_value_mode(self.checkpoint), **ensembles)
        return policy, BestOfNPlanner(policy, config)


_WORKER: dict = {}


def _worker_init(checkpoint: str, task_name: str, candidates: int, num_steps: int, render_size: int, threads: int,
                 learned: LearnedPlanner | None) -> None:
    import torch

    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.runtime.policy import CosmosPolicy, policy_config_for
    from cosmos_policy_core.runtime.rollout import CONTROL_HZ
    from cosmos_policy_core.sim.env import AlohaSimEnv
    from cosmos_policy_core.sim.tasks import get_task

    torch.set_num_threads(threads)
    if learned is None:
        policy = CosmosPolicy.from_checkpoint(checkpoint, config=policy_config_for(checkpoint, num_steps=num_steps))
        planner = None
    else:
        policy, planner = learned.load(checkpoint, candidates, num_steps)
    env = AlohaSimEnv(task_name, render_size, render_size, control_hz=CONTROL_HZ)
    env.__enter__()  # closed when the worker exits
    _WORKER.update(policy=policy, planner=planner, env=env, task=get_task(task_name),
                   executor_config=ExecutorConfig.aloha(CONTROL_HZ))   # sim eval's, in whole chunks


def _worker_episode(index: int, seed: int, candidates: int, num_steps: int, max_steps: int,
                    record: str | None, lookaheads: int) -> CeilingEpisode:
    w = _WORKER
    return ceiling_episode(w["policy"], w["env"], w["executor_config"], w["task"], seed, candidates, num_steps,
                           max_steps or w["task"].episode_len_25hz, w["planner"], index, record, lookaheads)


def run_ceiling(checkpoint: str, task_name: str, seeds: list[int], candidates: int, num_steps: int,
                workers: int, render_size: int = 224, max_steps: int = 0,
                learned: LearnedPlanner | None = None, record: str | None = None,
                lookaheads: int = 1) -> list[CeilingEpisode]:
    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    out = []
    with ctx.Pool(workers, initializer=_worker_init,
                  initargs=(checkpoint, task_name, candidates, num_steps, render_size, threads, learned)) as pool:
        jobs = [pool.apply_async(_worker_episode, (i, s, candidates, num_steps, max_steps, record, lookaheads))
                for i, s in enumerate(seeds)]
        bar = tqdm(total=len(seeds), desc=f"best of {candidates}, judged by the sim", unit="ep")
        for job in jobs:
            out.append(job.get())
            bar.update(1)
            bar.set_postfix(success=f"{sum(e.success for e in out)}/{len(out)}")
        bar.close()
    return out


def _split(d: Decision) -> bool:
    """Some of the candidates' (first) futures succeeded and some failed: where a choice matters."""
    return len({ok for ok, _ in d.futures}) > 1


def _chance(split: list[Decision]) -> dict:
    """Successes a random pick expects over these decisions (each: its share of succeeding candidates), and their sd."""
    shares = [float(np.mean([ok for ok, _ in d.futures])) for d in split]
    return {"chance": round(sum(shares), 1), "chance_sd": round(float(np.sqrt(sum(q * (1 - q) for q in shares))), 1)}


def disagreement(episodes: list[CeilingEpisode]) -> dict:
    """How often the candidates' futures differed: where a judge could have changed anything."""
    decisions = [d for e in episodes for d in e.decisions]
    split = [d for d in decisions if _split(d)]
    rescued = [d for d in split if not d.futures[0][0]]          # candidate 0's future failed, another's succeeded
    return {"decisions": len(decisions),
            "some_succeed_some_fail": len(split),
            "candidate_0_fails_another_succeeds": len(rescued),
            "all_succeed": sum(all(ok for ok, _ in d.futures) for d in decisions),
            "all_fail": sum(not any(ok for ok, _ in d.futures) for d in decisions),
            "chose_other_than_0": sum(d.chosen != 0 for d in decisions)}


def learned_choices(episodes: list[CeilingEpisode]) -> dict | None:
    """Where the candidates' futures split: how often the learned planner's choice was a succeeding one, against
    candidate 0 (the policy alone) and chance (the share of succeeding candidates, summed over those decisions)."""
    split = [d for e in episodes for d in e.decisions if d.planner_choice is not None and _split(d)]
    if not any(d.planner_choice is not None for e in episodes for d in e.decisions):
        return None
    return {"split_decisions": len(split),
            "planner_picks_success": sum(d.futures[d.planner_choice][0] for d in split),
            "candidate_0_succeeds": sum(d.futures[0][0] for d in split),
            **_chance(split),
            "planner_picks_other_than_0": sum(d.planner_choice != 0 for d in split),
            "pairs_ordered_right": _pairwise(split)}


def repeatability(episodes: list[CeilingEpisode]) -> dict | None:
    """Where the first lookaheads split: does a candidate's repeated future (other seeds for the policy's later
    chunks) follow its first one? And a judge that picks by the repeats alone, scored on the first futures as the
    learned planner is: the most any value of (state, candidate) could get right there. Over all such queries and
    per query step (where in the episode the candidate decides its outcome)."""
    split = [d for e in episodes for d in e.decisions if d.repeats is not None and _split(d)]
    if not split:
        return None
    steps = sorted({d.step for d in split})
    return {**_repeat_stats(split), "repeats_per_candidate": len(split[0].repeats[0]),
            "by_query_step": {str(t): _repeat_stats([d for d in split if d.step == t]) for t in steps}}


def _repeat_stats(split: list[Decision]) -> dict:
    again: dict[bool, list[bool]] = {True: [], False: []}
    picks = 0.0
    for d in split:
        first = [ok for ok, _ in d.futures]
        for ok, reps in zip(first, d.repeats):
            again[ok] += reps
        rates = [float(np.mean(r)) for r in d.repeats]
        top = [i for i, r in enumerate(rates) if r == max(rates)]
        picks += float(np.mean([first[i] for i in top]))              # ties: a random pick among the best

    def rate(xs):
        return round(float(np.mean(xs)), 3) if xs else None

    return {"split_decisions": len(split),
            "repeat_succeeds_after_first_success": rate(again[True]),
            "repeat_succeeds_after_first_failure": rate(again[False]),
            "repeats_pick_success": round(picks, 1), **_chance(split)}


def _pairwise(decisions: list[Decision]) -> float | None:
    """Of the (succeeding, failing) candidate pairs within each decision, the share the planner values in that
    order (ties count half): 0.5 is a planner that cannot tell them apart."""
    right, pairs = 0.0, 0
    for d in decisions:
        for v_ok, (ok, _) in zip(d.planner_values, d.futures):
            for v_bad, (bad_ok, _) in zip(d.planner_values, d.futures):
                if ok and not bad_ok:
                    pairs += 1
                    right += 1.0 if v_ok > v_bad else 0.5 if v_ok == v_bad else 0.0
    return round(right / pairs, 3) if pairs else None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=40000)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="control steps per episode (default: the task's)")
    p.add_argument("--out", required=True, help="directory for plain.json, ceiling.json and summary.json")
    p.add_argument("--planning-checkpoint", default=None,
                   help="also value every query's candidates with this checkpoint's planner (its choice is not played)")
    p.add_argument("--record-queries", default=None, metavar="DIR",
                   help="write every judged query (observation, candidates, their futures) to DIR, one .npz each: "
                        "which of several chunks from one state succeed")
    p.add_argument("--lookaheads", type=int, default=1,
                   help="try each candidate's future this many times, with other seeds for the policy's chunks "
                        "after it; the judge decides on the first, the others measure how much the candidate decides "
                        "its outcome")
    p.add_argument("--world-model-samples", type=int, default=None)
    p.add_argument("--value-samples", type=int, default=None)
    args = p.parse_args(argv)
    if args.lookaheads < 1 or args.lookaheads > 10:
        p.error("--lookaheads must be 1 to 10")
    if args.candidates < 2:
        p.error("--candidates must be at least 2 (1 is the policy alone, which plain.json already holds)")

    from cosmos_policy_core.checkpoint import DeploySettings
    from cosmos_policy_core.runtime.comparison import compare_reports
    from cosmos_policy_core.runtime.rollout import EvalConfig, EvalReport, evaluate_checkpoint, wilson_interval
    from cosmos_policy_core.sim.tasks import checkpoint_task, get_task

    checkpoint = str(Path(args.checkpoint))
    deploy = DeploySettings.from_checkpoint(checkpoint)
    num_steps = args.steps or deploy.num_steps
    task_name = checkpoint_task(checkpoint) or "transfer_cube"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.episodes))
    if args.record_queries:
        Path(args.record_queries).mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    cfg = EvalConfig(task=task_name, episodes=args.episodes, seed=args.seed, execution="whole_chunks",
                     execute_steps=CHUNK, num_steps=num_steps, max_steps=args.max_steps or None)
    plain = evaluate_checkpoint(checkpoint, cfg, workers=args.workers).to_json_dict()
    plain_s = time.perf_counter() - t0
    (out / "plain.json").write_text(json.dumps(plain, indent=1))

    t0 = time.perf_counter()
    learned = None if args.planning_checkpoint is None else LearnedPlanner(
        args.planning_checkpoint, args.world_model_samples, args.value_samples)
    episodes = run_ceiling(checkpoint, task_name, seeds, args.candidates, num_steps, args.workers,
                           max_steps=args.max_steps, learned=learned, record=args.record_queries,
                           lookaheads=args.lookaheads)
    ceiling_s = time.perf_counter() - t0
    config = {**plain["config"], "planner_candidates": args.candidates, "judge": "the sim: candidate, then the policy"}
    k = sum(e.success for e in episodes)
    ceiling = EvalReport(task=task_name, checkpoint=checkpoint, episodes=len(episodes), successes=k,
                         success_rate=k / len(episodes), ci95=wilson_interval(k, len(episodes)), per_episode=episodes,
                         config=config, seconds=round(ceiling_s, 1)).to_json_dict()
    (out / "ceiling.json").write_text(json.dumps(ceiling, indent=1))

    comparison = compare_reports(plain, ceiling, "policy alone", f"best of {args.candidates} judged by the sim")
    summary = {"comparison": comparison.to_json_dict(), "futures": disagreement(episodes),
               "learned_planner": None if learned is None else {**asdict(learned), **learned_choices(episodes)},
               "repeated_lookaheads": repeatability(episodes),
               "minutes": {"plain": round(plain_s / 60, 1), "ceiling": round(ceiling_s / 60, 1)},
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "python": platform.python_version()},
               "task": get_task(task_name).name, "checkpoint": checkpoint, "num_steps": num_steps}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for line in comparison.lines():
        print(line)
    print("candidates' futures:", json.dumps(summary["futures"]))
    if summary["repeated_lookaheads"] is not None:
        print("repeated lookaheads where they split:", json.dumps(summary["repeated_lookaheads"]))
    if learned is not None:
        print("the learned planner where they split:", json.dumps(summary["learned_planner"]))
    print(f"minutes: policy alone {summary['minutes']['plain']}, best of {args.candidates} {summary['minutes']['ceiling']}")
    return summary


if __name__ == "__main__":
    main()
