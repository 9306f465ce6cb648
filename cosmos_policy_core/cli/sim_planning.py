"""`cosmos-aloha sim score-planning` (value AUROC and world-model PSNR on held-out rollouts), `sim compare` (two
`sim eval` reports paired by seed), `sim merge` (one evaluation run in pieces, as one report) and `sim scenes`
(where a report's successes and failures lie). Registered by cli/sim.py, as `sim eval` is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cosmos_policy_core.errors import ConfigError


def _read_report(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"report {path} does not exist; write one with `cosmos-aloha sim eval --json FILE`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"report {path} is not a readable JSON file ({e})") from e


def _compare(args) -> int:
    from cosmos_policy_core.runtime.comparison import compare_reports

    label_a = args.label_a or Path(args.a).stem
    label_b = args.label_b or Path(args.b).stem
    result = compare_reports(_read_report(args.a), _read_report(args.b), label_a, label_b)
    for line in result.lines():
        print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_json_dict(), indent=2))
    return 0


def _merge(args) -> int:
    from cosmos_policy_core.runtime.comparison import merge_reports

    merged = merge_reports([_read_report(p) for p in args.reports], [Path(p).name for p in args.reports])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(merged, indent=2))
    low, high = merged["ci95"]
    print(f"{args.out}: {merged['successes']}/{merged['episodes']} successes, rate {merged['success_rate']:.1%} "
          f"(95% Wilson CI {low:.1%}-{high:.1%}), seeds {merged['per_episode'][0]['seed']}-"
          f"{merged['per_episode'][-1]['seed']} from {len(args.reports)} reports")
    return 0


def _scenes(args) -> int:
    from cosmos_policy_core.runtime.comparison import failure_stages, plot_scene_map, scene_map

    report = _read_report(args.report)
    scenes = scene_map(report, Path(args.report).name, bins=args.bins)
    for line in scenes.lines():
        print(line)
    if not all(scenes.successes) and all("reward_steps" in e for e in report["per_episode"]):
        for line in failure_stages(report, Path(args.report).name).lines():
            print(line)
    if args.plot:
        print(f"plot: {plot_scene_map(scenes, args.plot, title=Path(args.report).stem)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scenes.to_json_dict(), indent=2))
    return 0


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def _score(args) -> int:
    from cosmos_policy_core.data.episode import load_episode_dir
    from cosmos_policy_core.runtime.planner import planning_value_mode
    from cosmos_policy_core.runtime.policy import CosmosPolicy
    from cosmos_policy_core.train.planning_quality import score_planning

    episodes = load_episode_dir(args.rollouts)
    if args.max_episodes is not None:
        episodes = episodes[: args.max_episodes]
    policy = CosmosPolicy.from_checkpoint(args.checkpoint, device=args.device,
                                          planning_checkpoint=args.planning_checkpoint)
    value_mode = args.value_mode or planning_value_mode(args.planning_checkpoint or args.checkpoint)
    scores = score_planning(policy, episodes, stride=args.stride, seed=args.seed,
                            world_model_steps=args.world_model_steps, value_steps=args.value_steps,
                            value_mode=value_mode, progress=not args.no_progress)
    scores.config.update(checkpoint=str(args.checkpoint), planning_checkpoint=args.planning_checkpoint,
                         rollouts=str(args.rollouts))

    def auc(x: float | None) -> str:
        return "undefined (the rollouts need successes and failures)" if x is None else f"{x:.3f}"

    print(f"{scores.samples} steps of {scores.episodes} rollouts ({scores.successes} successful), every "
          f"{args.stride} steps, scored by {value_mode} of {args.planning_checkpoint or args.checkpoint}")
    print(f"value AUROC for eventual success: {auc(scores.value_auroc)} on the reached state, "
          f"{auc(scores.value_auroc_predicted)} on the world model's prediction (0.5: chance)")
    print(f"world model at t+{policy.layout.chunk_size}: PSNR {_db(scores.world_model_psnr_db)} dB vs "
          f"{_db(scores.copy_psnr_db)} dB for copying the current frame; better than the copy on "
          f"{scores.world_model_better:.0%} of the steps")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores.to_json_dict(), indent=2))
    return 0


def add_planning_parsers(sim_commands) -> None:
    """Add `score-planning`, `compare`, `merge` and `scenes` to the `cosmos-aloha sim` command group (called by
    cli/sim.py)."""
    s = sim_commands.add_parser(
        "score-planning", help="value AUROC and world-model PSNR of a planning checkpoint on held-out rollouts",
        description="For every --stride-th step of each rollout: the world model, given the actions the rollout "
                    "executed, predicts the frames 50 steps later (PSNR against the real ones, and against copying "
                    "the current frame); V(s') of the reached state and of the prediction are ranked against the "
                    "rollout's success (AUROC). Use rollouts the planning checkpoint was not trained on.",
    )
    s.add_argument("--checkpoint", required=True, help="the policy checkpoint directory (its VAE and statistics)")
    s.add_argument("--planning-checkpoint", help="the planning fine-tune to score (default: the policy network)")
    s.add_argument("--rollouts", required=True, help="directory of held-out rollouts (`sim eval --record-rollouts`)")
    s.add_argument("--stride", type=int, default=25, help="control steps between scored steps of an episode")
    s.add_argument("--max-episodes", type=int, help="score only the first N episodes")
    s.add_argument("--world-model-steps", type=int, default=5, help="denoising steps of the world-model sample")
    s.add_argument("--value-steps", type=int, default=5, help="denoising steps of each value sample")
    s.add_argument("--value-mode", choices=("V(s')", "V(s,a,s')", "Q(s,a)"),
                   help="default: the role the scoring checkpoint was trained for")
    s.add_argument("--seed", type=int, default=0, help="noise seed of the first scored step (then +1 per step)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--json", help="write the numbers and every scored step")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_score)

    c = sim_commands.add_parser(
        "compare", help="two `sim eval --json` reports on the same seeds, paired (e.g. with and without planning)",
        description="Both success rates with 95 % Wilson intervals, the scenes solved by one run and not the other, "
                    "and the exact McNemar p-value of that difference.",
    )
    c.add_argument("a", help="the baseline report (e.g. without planning)")
    c.add_argument("b", help="the report compared with it (e.g. with --planner-candidates N)")
    c.add_argument("--label-a", help="name of the first run (default: its file name)")
    c.add_argument("--label-b", help="name of the second run (default: its file name)")
    c.add_argument("--json", help="write the comparison")
    c.set_defaults(func=_compare)

    m = sim_commands.add_parser(
        "merge", help="one report from `sim eval --json` reports of the same checkpoint and settings on other seeds",
        description="Joins the pieces of one evaluation (run in parts, or on several machines) into one report that "
                    "`sim compare` pairs like any other: episodes ordered by seed, counts and intervals recomputed. "
                    "Pieces of another task, checkpoint or setting, or a seed run twice, are refused.",
    )
    m.add_argument("reports", nargs="+", help="the `sim eval --json` reports, two or more")
    m.add_argument("--out", required=True, help="the merged report")
    m.set_defaults(func=_merge)

    g = sim_commands.add_parser(
        "scenes", help="where the objects of a `sim eval --json` report's successes and failures lay",
        description="Each episode's objects at the poses its seed draws (as the sim draws them), with the highest "
                    "reward it reached: a table of successes over a grid of the first object's sampling range, the "
                    "failures by the furthest stage of the task each held, and with --plot a top view of every "
                    "episode.",
    )
    g.add_argument("report", help="the `sim eval --json` report (or a `sim merge` of several)")
    g.add_argument("--bins", type=int, default=3, help="grid cells per axis of the table")
    g.add_argument("--plot", help="write the top view here (PNG)")
    g.add_argument("--json", help="write every episode's object poses and outcome, and the grid")
    g.set_defaults(func=_scenes)
