"""`cosmos-aloha sim eval`: closed-loop success rate of a checkpoint in MuJoCo (registered by cli/sim.py).

No `register` here on purpose: this module adds a subcommand to the `sim` group, not a top-level command.
"""
from __future__ import annotations

import json
from pathlib import Path

from cosmos_policy_core.checkpoint import TEXT_FILE
from cosmos_policy_core.engines.resolve import ENGINES, PRECISION_NAMES
from cosmos_policy_core.errors import ConfigError


def _eval(args) -> int:
    from cosmos_policy_core.runtime.comparison import failure_stages
    from cosmos_policy_core.runtime.rollout import EvalConfig, evaluate_checkpoint
    from cosmos_policy_core.sim.tasks import checkpoint_task

    task = args.task or checkpoint_task(args.checkpoint)
    if task is None and (Path(args.checkpoint) / TEXT_FILE).is_file():
        raise ConfigError(f"{args.checkpoint} has text embeddings for none or several of the sim tasks' descriptions; "
                          "pass --task transfer_cube or --task insertion")
    task = task or "transfer_cube"  # a checkpoint without task strings fails to load below, naming what it lacks
    cfg = EvalConfig(task=task, episodes=args.episodes, seed=args.seed, num_steps=args.steps,
                     execution=args.execution, execute_steps=args.execute_steps, latency_steps=args.latency_steps,
                     ensemble_decay=args.ensemble_decay, max_steps=args.max_steps,
                     planner_candidates=args.planner_candidates, planning_checkpoint=args.planning_checkpoint,
                     value_mode=args.value_mode, world_model_samples=args.world_model_samples,
                     value_samples=args.value_samples, hold_steps=args.hold_steps,
                     jpeg_quality=args.jpeg_quality, engine=args.engine, device=args.device,
                     dtype=None if args.dtype == "auto" else args.dtype, export_dir=args.export_dir,
                     clip_actions=not args.no_clip)
    report = evaluate_checkpoint(args.checkpoint, cfg, gif_path=args.video, progress=not args.no_progress,
                                 workers=args.workers, record_dir=args.record_rollouts)
    lo, hi = report.ci95
    c = report.config
    print(f"deployment: {c['execution']}, a chunk every {c['execute_steps']} steps"
          + (f", ensemble decay {c['ensemble_decay']:g}" if c["ensemble_decay"] is not None else "")
          + f", {c['num_steps']} denoising steps" + ("" if c["clip_actions"] else ", actions not clipped"))
    if c["planner_candidates"] > 1:
        from cosmos_policy_core.runtime.planner import PlannerConfig

        world_models = c["world_model_samples"] or PlannerConfig.world_model_samples
        values = c["value_samples"] or PlannerConfig.value_samples
        print(f"planning: best of {c['planner_candidates']} at every query by {c['value_mode']} of "
              f"{c['planning_checkpoint'] or 'the policy network'}, {world_models} world-model x {values} value "
              f"samples per candidate"
              + (" (each chosen chunk joins the ensemble; the value scores the chunk played alone)"
                 if c["execution"] == "temporal_ensemble" else ""))
    print(f"{report.task}: {report.successes}/{report.episodes} successes, rate {report.success_rate:.1%} "
          f"(95% Wilson CI {lo:.1%}-{hi:.1%}); max rewards {[e.max_reward for e in report.per_episode]}")
    if report.held_successes is not None:
        lo, hi = report.held_ci95
        print(f"held {args.hold_steps}+ control steps: {report.held_successes}/{report.episodes}, rate "
              f"{report.held_success_rate:.1%} (95% Wilson CI {lo:.1%}-{hi:.1%}); longest holds "
              f"{[e.longest_hold for e in report.per_episode]}")
    at_level = [sum(n) for n in zip(*(e.reward_steps for e in report.per_episode))]
    print(f"control steps at reward 0..{len(at_level) - 1}, all episodes: {at_level}")
    report_dict = report.to_json_dict()
    if report.successes < report.episodes:
        for line in failure_stages(report_dict, "this run").lines():
            print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report_dict, indent=2))
    if report.rollouts is not None:
        r = report.rollouts
        print(f"rollouts: {r['written']} episodes ({r['successes']} successes) written to {r['dir']}"
              + (f", {r['skipped']} skipped (see its report.json)" if r["skipped"] else ""))
    if args.video:
        print(f"rollout GIF (real cameras, predicted t+50 frames below, the value of each chunk under them): "
              f"{args.video}")
    if report.unfinished_seeds:
        left = report.unfinished_seeds
        rest = (f"run them with --seed {left[0]} --episodes {len(left)}" if left == list(range(left[0], left[-1] + 1))
                else "its unfinished_seeds lists them")
        print(f"interrupted after {report.episodes} of {c['episodes']} episodes"
              + (f" (the report {args.json} holds them)" if args.json else "")
              + f"; {len(left)} seeds not run: {rest}, then join the reports with `cosmos-aloha sim merge`")
        return 130
    return 0


def add_eval_parser(sim_commands) -> None:
    """Add `eval` to the `cosmos-aloha sim` command group (called by cli/sim.py)."""
    parser = sim_commands.add_parser(
        "eval", help="closed-loop evaluation of a checkpoint through the ROS executor's chunk logic",
        description="Runs CosmosPolicy (optionally best-of-N planning) in the joint-space MuJoCo sim at 25 Hz "
                    "through ChunkExecutor + SafetyFilter; success rate with a 95% Wilson interval.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--task", choices=("transfer_cube", "insertion"),
                        help="the sim task (default: the one the checkpoint has the task string of)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="episode i samples the objects with seed + i")
    parser.add_argument("--steps", type=int, help="denoising steps per chunk (default: the checkpoint's deploy settings)")
    parser.add_argument("--execution", choices=("whole_chunks", "temporal_ensemble"),
                        help="how chunks are played (default: the checkpoint's deploy settings)")
    parser.add_argument("--execute-steps", type=int,
                        help="actions played before re-querying (default: the checkpoint's deploy settings; whole "
                             "chunks: 50)")
    parser.add_argument("--latency-steps", type=int, default=0,
                        help="inference latency in control steps: each chunk reaches the executor this many steps "
                             "after its observation, as on the robot (default 0: the clock stops while the model "
                             "thinks). The ROS policy node with trigger_remaining_steps R plays 50 - R + latency "
                             "steps of each chunk: pass that as --execute-steps")
    parser.add_argument("--ensemble-decay", type=float,
                        help="temporal ensembling's decay k (ACT): every live chunk's current step averaged with "
                             "weight exp(-k i), i = 0 for the oldest (ACT: 0.01); implies --execution "
                             "temporal_ensemble unless given")
    parser.add_argument("--max-steps", type=int, help="control steps per episode (default: the task length)")
    parser.add_argument("--planner-candidates", type=int, default=0,
                        help="best-of-N planning with N > 1, at every query (also under temporal ensembling)")
    parser.add_argument("--planning-checkpoint",
                        help="the planning fine-tune (`train --config planning`) whose world model and value score "
                             "the candidates (default: the policy network)")
    parser.add_argument("--value-mode", choices=("V(s')", "V(s,a,s')", "Q(s,a)"),
                        help="the value the planner asks for (default: the role the scoring checkpoint was "
                             "trained for: V(s') for a planning fine-tune)")
    parser.add_argument("--world-model-samples", type=int, metavar="W",
                        help="the planner's world-model ensemble per candidate (default 3, the reference's)")
    parser.add_argument("--value-samples", type=int, metavar="V",
                        help="the planner's value ensemble per world-model sample (default 5, the reference's)")
    parser.add_argument("--hold-steps", type=int, default=0,
                        help="also count a stricter success: the maximum reward held this many consecutive control "
                             "steps (episodes then run on past their first success)")
    parser.add_argument("--jpeg-quality", type=int, metavar="Q",
                        help="JPEG-encode and decode every camera frame at quality Q (1-100) before the policy "
                             "sees it, as a policy on another host receives <camera>/image_raw/compressed; "
                             "compare with the same --seed without it")
    parser.add_argument("--no-clip", action="store_true",
                        help="do not clamp normalized actions to [-1, 1] (the range of the checkpoint's statistics)")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch (eager), compile (torch.compile), onnx / tensorrt (the graphs of `cosmos-aloha "
                             "export`)")
    parser.add_argument("--export-dir", help="export directory for --engine onnx / tensorrt (default: "
                                             "<checkpoint>/export)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", choices=("auto", *PRECISION_NAMES), default="auto",
                        help="network precision (auto: bf16 on a GPU, fp32 on a CPU; onnx / tensorrt: as exported)")
    parser.add_argument("--json", help="write the report (episodes, successes, success_rate, ci95, max rewards; "
                                        "held_* with --hold-steps; per_episode: every seed's result and chunk "
                                        "values, which `sim compare` pairs across runs)")
    parser.add_argument("--video", help="GIF of episode 0 with the predicted future frames and the value over time")
    parser.add_argument("--record-rollouts", metavar="DIR",
                        help="write every episode (successes and failures) to this new directory as a dataset "
                             "(ALOHA HDF5, JPEG frames at the render size, attrs success / task / seed): the "
                             "rollouts of `train --config planning --rollouts`")
    parser.add_argument("--workers", type=int, default=1,
                        help="episodes in parallel processes (one sim + policy each, cores split between them)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=_eval)
