"""Paired comparison of two `sim eval` reports on the same seeds (e.g. with and without planning): both success
rates with Wilson intervals, the scenes solved by one run only, and the exact McNemar test on those; and the
merge of one evaluation run in pieces (other seeds, other machines) into one report.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
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
              "max_rewards": [e.get("max_reward") for e in episodes], "merged_from": list(names)}
    hold = int(config.get("hold_steps") or 0)
    if hold > 0 and all(r.get("held_successes") is not None for r in reports):
        h = sum(int(e.get("longest_hold", 0)) >= hold for e in episodes)
        merged.update(held_successes=h, held_success_rate=h / n, held_ci95=list(wilson_interval(h, n)))
    else:
        merged.update(held_successes=None, held_success_rate=None, held_ci95=None)
    return merged


__all__ = ["mcnemar_exact", "RunSummary", "PairedComparison", "compare_reports", "merge_reports"]
