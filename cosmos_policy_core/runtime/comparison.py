"""Paired comparison of two `sim eval` reports on the same seeds (e.g. with and without planning): both success
rates with Wilson intervals, the scenes solved by one run only, and the exact McNemar test on those; the merge
of one evaluation run in pieces (other seeds, other machines) into one report; where in the scene a report's
successes and failures lie, and at which stage of the task its failures stopped.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.rollout import EvalConfig, wilson_interval


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under no difference each discordant scene is a fair coin, so the
    smaller count is binomial(n = only_a + only_b, 1/2); p = min(1, 2 P(X <= min)). 1 with no discordant scene."""
    if only_a < 0 or only_b < 0:
        raise ConfigError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass
class RunSummary:
    label: str
    successes: int
    episodes: int
    rate: float
    ci95: tuple[float, float]


@dataclass
class PairedComparison:
    a: RunSummary
    b: RunSummary
    seeds: int
    both: int
    only_a: int
    only_b: int
    neither: int
    difference: float          # rate of b minus rate of a, on the shared seeds
    mcnemar_p: float

    def to_json_dict(self) -> dict:
        out = asdict(self)
        for run in ("a", "b"):
            out[run]["ci95"] = list(out[run]["ci95"])
        return out

    def lines(self) -> list[str]:
        out = []
        for run in (self.a, self.b):
            lo, hi = run.ci95
            out.append(f"{run.label}: {run.successes}/{run.episodes} successes, rate {run.rate:.1%} "
                       f"(95% Wilson CI {lo:.1%}-{hi:.1%})")
        out.append(f"paired on {self.seeds} seeds: solved by both {self.both}, only by {self.a.label} {self.only_a}, "
                   f"only by {self.b.label} {self.only_b}, by neither {self.neither}")
        out.append(f"difference {self.b.label} - {self.a.label}: {self.difference:+.1%} "
                   f"(exact McNemar p = {self.mcnemar_p:.3g})")
        return out


def _successes_by_seed(report: Mapping, name: str) -> dict[int, bool]:
    episodes = report.get("per_episode") if isinstance(report, Mapping) else None
    if not isinstance(episodes, list) or not episodes:
        raise ConfigError(f"{name} has no per_episode table; pass the file `sim eval --json` wrote")
    out = {}
    for e in episodes:
        try:
            seed, success = int(e["seed"]), bool(e["success"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{name}: a per_episode entry lacks seed / success: {str(e)[:80]}") from None
        if seed in out:
            raise ConfigError(f"{name} holds seed {seed} twice; compare one run per file")
        out[seed] = success
    return out


def compare_reports(a: Mapping, b: Mapping, label_a: str = "A", label_b: str = "B") -> PairedComparison:
    """Compare two `sim eval --json` reports scene by scene; they must hold the same task and seeds."""
    if a.get("task") != b.get("task"):
        raise ConfigError(f"{label_a} evaluates {a.get('task')!r} and {label_b} {b.get('task')!r}; compare runs of "
                          "one task")
    sa, sb = _successes_by_seed(a, label_a), _successes_by_seed(b, label_b)
    if sa.keys() != sb.keys():
        only = sorted(sa.keys() - sb.keys())[:5], sorted(sb.keys() - sa.keys())[:5]
        raise ConfigError(f"{label_a} and {label_b} ran different seeds (only in {label_a}: {only[0]}, only in "
                          f"{label_b}: {only[1]}, first 5 each); run both with the same --seed and --episodes")
    seeds = sorted(sa)
    both = sum(sa[s] and sb[s] for s in seeds)
    only_a = sum(sa[s] and not sb[s] for s in seeds)
    only_b = sum(sb[s] and not sa[s] for s in seeds)
    n = len(seeds)

    def summary(label: str, wins: dict[int, bool]) -> RunSummary:
        k = sum(wins.values())
        return RunSummary(label, k, n, k / n, wilson_interval(k, n))

    return PairedComparison(summary(label_a, sa), summary(label_b, sb), n, both, only_a, only_b,
                            n - both - only_a - only_b, (only_b - only_a) / n, mcnemar_exact(only_a, only_b))


# Settings that may differ between the pieces of one evaluation: which seeds, and how many processes ran them.
MERGE_FREE_KEYS = ("seed", "episodes", "workers")
_EVAL_DEFAULTS = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING}


def merge_reports(reports: Sequence[Mapping], names: Sequence[str]) -> dict:
    """One `sim eval --json` report from several runs of the same checkpoint and settings on different seeds.

    Episodes are ordered by seed; counts, rates, intervals and (when every piece counted them) held successes
    are recomputed; `merged_from` names the pieces. Refuses pieces of other tasks, checkpoints or settings, and a
    seed run twice.
    """
    if len(reports) < 2:
        raise ConfigError("merge needs at least two reports")
    first, first_name = reports[0], names[0]
    episodes, seen = [], {}
    for report, name in zip(reports, names):
        _successes_by_seed(report, name)   # checks the per_episode table
        for key in ("task", "checkpoint"):
            if report.get(key) != first.get(key):
                raise ConfigError(f"{name} evaluates {key} {report.get(key)!r} and {first_name} "
                                  f"{first.get(key)!r}; merge pieces of one evaluation only")
        # A setting missing from a report written before it existed had its default value.
        config = {**_EVAL_DEFAULTS, **(report.get("config") or {})}
        first_config = {**_EVAL_DEFAULTS, **(first.get("config") or {})}
        differ = sorted(k for k in config.keys() | first_config.keys()
                        if k not in MERGE_FREE_KEYS and config.get(k) != first_config.get(k))
        if differ:
            raise ConfigError(f"{name} and {first_name} ran with other settings ({', '.join(differ)}); merge "
                              "pieces of one evaluation only")
        for e in report["per_episode"]:
            if int(e["seed"]) in seen:
                raise ConfigError(f"seed {e['seed']} is in both {seen[int(e['seed'])]} and {name}")
            seen[int(e["seed"])] = name
            episodes.append(dict(e))
    episodes.sort(key=lambda e: int(e["seed"]))
    for i, e in enumerate(episodes):
        e["index"] = i
    n, k = len(episodes), sum(bool(e["success"]) for e in episodes)
    config = dict(first.get("config") or {})
    config.update(seed=int(episodes[0]["seed"]), episodes=n)
    merged = {**first, "episodes": n, "successes": k, "success_rate": k / n, "ci95": list(wilson_interval(k, n)),
              "per_episode": episodes, "config": config,
              "seconds": round(sum(float(r.get("seconds") or 0.0) for r in reports), 1),
              "rollouts": [r["rollouts"] for r in reports if r.get("rollouts")] or None,
              "max_rewards": [e.get("max_reward") for e in episodes], "merged_from": list(names),
              "unfinished_seeds": sorted({int(x) for r in reports for x in r.get("unfinished_seeds") or []}
                                         - set(seen))}
    hold = int(config.get("hold_steps") or 0)
    if hold > 0 and all(r.get("held_successes") is not None for r in reports):
        h = sum(int(e.get("longest_hold", 0)) >= hold for e in episodes)
        merged.update(held_successes=h, held_success_rate=h / n, held_ci95=list(wilson_interval(h, n)))
    else:
        merged.update(held_successes=None, held_success_rate=None, held_ci95=None)
    return merged



@dataclass
class SceneMap:
    """Where each episode's objects lay (drawn from its seed, as the sim draws them) and how it ended: the
    successes of a `sim eval` report over a grid of the first object's sampling range."""
    task: str
    objects: tuple[str, ...]
    poses: list[list[list[float]]]   # per episode, per object: x, y, z (m)
    max_rewards: list[int]
    successes: list[bool]
    x_edges: list[float]             # the grid over the first object's x and y ranges
    y_edges: list[float]
    cell_successes: list[list[int]]  # [y bin][x bin]
    cell_episodes: list[list[int]]

    def to_json_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        n, k = len(self.successes), sum(self.successes)
        nx = len(self.x_edges) - 1
        head = [f"x {self.x_edges[i]:.2f}-{self.x_edges[i + 1]:.2f}" for i in range(nx)]
        out = [f"{self.task}: {k}/{n} successes by where {self.objects[0]} lay (successes / episodes per cell, m)",
               " " * 11 + "".join(f"{h:>14}" for h in head)]
        for j in reversed(range(len(self.y_edges) - 1)):     # larger y on top, as in the plot
            cells = [f"{self.cell_successes[j][i]}/{self.cell_episodes[j][i]}" for i in range(nx)]
            out.append(f"y {self.y_edges[j]:.2f}-{self.y_edges[j + 1]:.2f}" + "".join(f"{c:>14}" for c in cells))
        return out


def scene_map(report: Mapping, name: str, bins: int = 3) -> SceneMap:
    """The scene of every episode of a `sim eval --json` report (the objects' poses from its seed) with its
    outcome, and the successes over a `bins` x `bins` grid of the first object's sampling range."""
    from cosmos_policy_core.sim.tasks import MAX_REWARD, get_task

    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be an integer >= 1, got {bins!r}")
    _successes_by_seed(report, name)   # checks the per_episode table
    task = get_task(str(report.get("task")))
    episodes = sorted(report["per_episode"], key=lambda e: int(e["seed"]))
    poses = [task.sample_object_poses(int(e["seed"]))[:, :3] for e in episodes]
    (x_lo, x_hi), (y_lo, y_hi) = task.ranges[0][0], task.ranges[0][1]
    x_edges = [x_lo + (x_hi - x_lo) * i / bins for i in range(bins + 1)]
    y_edges = [y_lo + (y_hi - y_lo) * i / bins for i in range(bins + 1)]
    wins = [[0] * bins for _ in range(bins)]
    count = [[0] * bins for _ in range(bins)]
    for e, pose in zip(episodes, poses):
        i = min(int((pose[0, 0] - x_lo) / (x_hi - x_lo) * bins), bins - 1)
        j = min(int((pose[0, 1] - y_lo) / (y_hi - y_lo) * bins), bins - 1)
        count[j][i] += 1
        wins[j][i] += bool(e["success"])
    return SceneMap(task.name, tuple(o.removesuffix("_joint") for o in task.objects),
                    [[[round(float(v), 4) for v in obj] for obj in pose] for pose in poses],
                    [int(e.get("max_reward", MAX_REWARD if e["success"] else 0)) for e in episodes],
                    [bool(e["success"]) for e in episodes], x_edges, y_edges, wins, count)


# Colour of each highest reward 0 (red) to sim.tasks.MAX_REWARD (green, the task's success).
REWARD_COLOURS = ("#b2182b", "#ef8a62", "#d4a000", "#4393c3", "#1a9850")


def plot_scene_map(scenes: SceneMap, path: str | Path, title: str = "") -> Path:
    """One panel per object, seen from above: each episode's object at its x, y, coloured by the highest reward
    the episode reached (circle: a success, cross: a failure), with the table's grid on the first object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(scenes.objects), figsize=(5 * len(scenes.objects), 5.2), squeeze=False)
    for k, (ax, obj) in enumerate(zip(axes[0], scenes.objects)):
        for reward, colour in enumerate(REWARD_COLOURS):
            for success in (True, False):
                pts = [p[k][:2] for p, r, s in zip(scenes.poses, scenes.max_rewards, scenes.successes)
                       if max(0, min(r, len(REWARD_COLOURS) - 1)) == reward and s == success]
                if pts:
                    ax.scatter(*zip(*pts), color=colour, marker="o" if success else "x", s=36 if success else 48)
        if k == 0:
            for edge in scenes.x_edges[1:-1]:
                ax.axvline(edge, color="0.85", lw=0.8, zorder=0)
            for edge in scenes.y_edges[1:-1]:
                ax.axhline(edge, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_title(obj)
        ax.set_aspect("equal", adjustable="datalim")
    handles = [Line2D([], [], ls="", marker="o" if r == len(REWARD_COLOURS) - 1 else "x", color=c,
                      label=f"highest reward {r}")
               for r, c in enumerate(REWARD_COLOURS)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    n, k = len(scenes.successes), sum(scenes.successes)
    fig.suptitle(f"{title + chr(10) if title else ''}{scenes.task}: {k}/{n} successes", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# Control steps an episode must spend at a reward level or above to count as having reached that stage: a cube
# nudged off the table for a step is not lifted.
STAGE_MIN_STEPS = 5


@dataclass
class FailureStages:
    """The failed episodes of a `sim eval` report by the furthest stage of the task each held: the highest reward
    level at or above which it spent `min_steps` control steps (0: not even the first stage)."""
    task: str
    stages: tuple[str, ...]        # reward 1..MAX_REWARD in words
    min_steps: int
    seeds: list[list[int]]         # the failures' seeds by furthest held stage, 0..MAX_REWARD - 1

    def lines(self, show_seeds: int = 6) -> list[str]:
        n = sum(map(len, self.seeds))
        out = [f"{n} failure{'' if n == 1 else 's'} by the furthest stage held {self.min_steps}+ control steps:"]
        for level, seeds in enumerate(self.seeds):
            reached = f'"{self.stages[level - 1]}", not ' if level else "not even "
            listed = ", ".join(map(str, seeds[:show_seeds])) + (", ..." if len(seeds) > show_seeds else "")
            out.append(f"  {len(seeds):>4}  {reached}\"{self.stages[level]}\""
                       + (f" (seeds {listed})" if seeds else ""))
        return out


def failure_stages(report: Mapping, name: str, min_steps: int = STAGE_MIN_STEPS) -> FailureStages:
    """Where the failures of a `sim eval --json` report stopped, from the control steps each episode spent at
    each reward level (`reward_steps`)."""
    from cosmos_policy_core.sim.tasks import MAX_REWARD, get_task

    if not isinstance(min_steps, int) or min_steps < 1:
        raise ConfigError(f"min_steps must be an integer >= 1, got {min_steps!r}")
    _successes_by_seed(report, name)   # checks the per_episode table
    task = get_task(str(report.get("task")))
    seeds: list[list[int]] = [[] for _ in range(MAX_REWARD)]
    for e in sorted(report["per_episode"], key=lambda e: int(e["seed"])):
        if e["success"]:
            continue
        steps = e.get("reward_steps")
        if not isinstance(steps, list) or len(steps) != MAX_REWARD + 1:
            raise ConfigError(f"{name}: episode of seed {e['seed']} has no reward_steps (steps at reward "
                              f"0..{MAX_REWARD}); reports of `sim eval` before they were recorded lack them")
        held = [level for level in range(MAX_REWARD) if sum(steps[level:]) >= min_steps]
        seeds[held[-1] if held else 0].append(int(e["seed"]))
    return FailureStages(task.name, task.stages, min_steps, seeds)


__all__ = ["mcnemar_exact", "RunSummary", "PairedComparison", "compare_reports", "merge_reports", "SceneMap",
           "scene_map", "plot_scene_map", "FailureStages", "failure_stages"]
