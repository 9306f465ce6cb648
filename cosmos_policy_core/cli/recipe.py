"""`cosmos-aloha recipe FILE --out WORK`: run a training recipe (format: train/recipe.py) from the first step to
the deployed checkpoint, each step through the same command a user would type, resuming after a stop.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from cosmos_policy_core.errors import ConfigError


def _check_options(recipe, work: Path) -> None:
    """Parse every step's command with the real parser up front, so that a typo fails before hours of work."""
    from cosmos_policy_core.cli import build_parser

    parser = build_parser()
    problems = []
    for step in recipe.steps:
        argv = recipe.command(step, work)
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit:
            lines = [line for line in said.getvalue().splitlines() if line.strip()]
            reason = re.sub(r"^.*?error: ", "", lines[-1]) if lines else "its options were not accepted"
            problems.append(f"step {step.name!r} ({step.run}): {reason}")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"recipe {recipe.path} has {len(problems)} problem(s), nothing was run:\n{listed}\n"
                          f"(`cosmos-aloha <command> --help` lists each command's options)")


def _plan(recipe, work: Path, from_step: str | None) -> tuple[int, int]:
    """(steps finished, index of the first step to run): the first unfinished step, or `from_step` if earlier."""
    finished = len(recipe.finished(work, before=from_step))
    if from_step is None:
        return finished, finished
    return finished, min(finished, recipe.steps.index(recipe.step(from_step)))


def _resumes(recipe, i: int, start: int, work: Path, from_step: str | None) -> bool:
    """Only the first step to run may continue a part-way run, and not when --from asks to run it again."""
    step = recipe.steps[i]
    return i == start and from_step != step.name and recipe.can_resume(step, work)


def _describe(recipe, step, work: Path, resume: bool) -> str:
    lines = [f"  # {step.note}"] if step.note else []
    lines.append("  " + shlex.join(["cosmos-aloha", *recipe.command(step, work, resume=resume)]))
    return "\n".join(lines)


def _dry_run(recipe, work: Path, finished: int, start: int, from_step: str | None) -> int:
    total = len(recipe.steps)
    print(f"recipe {recipe.name}: {total} steps, {finished} finished in {work}")
    if recipe.description:
        print(recipe.description)
    for i, step in enumerate(recipe.steps):
        resume = _resumes(recipe, i, start, work, from_step)
        state = ("finished" if i < start else
                 "continues from its last checkpoint" if resume else "to run")
        print(f"[{i + 1}/{total}] {step.name} ({state})")
        print(_describe(recipe, step, work, resume))
    deploy = json.dumps(recipe.deploy.to_dict())
    print(f"then: the checkpoint {work / recipe.name} = {recipe.output(recipe.steps[-1].name, work)} "
          f"with deploy {deploy}")
    return 0


def _recipe(args) -> int:
    from cosmos_policy_core.cli import main
    from cosmos_policy_core.train.recipe import Recipe

    recipe = Recipe.load(args.recipe)
    work = Path(args.out)
    if work.exists() and not work.is_dir():
        raise ConfigError(f"--out {work} is a file; pass a work directory")
    _check_options(recipe, work)
    finished, start = _plan(recipe, work, args.from_step)
    if args.dry_run:
        return _dry_run(recipe, work, finished, start, args.from_step)

    total = len(recipe.steps)
    work.mkdir(parents=True, exist_ok=True)
    if start:
        print(f"recipe {recipe.name}: resuming after {recipe.steps[start - 1].name} "
              f"({start} of {total} steps finished in {work})")
    else:
        print(f"recipe {recipe.name}: {total} steps into {work}")
    # Steps from `start` on run again: their markers (if a run is repeated with --from, or left by an older
    # run) no longer describe outputs made from the current inputs.
    recipe.forget(list(recipe.steps[start:]), work)
    for i in range(start, total):
        step = recipe.steps[i]
        out = work / step.name
        resume = _resumes(recipe, i, start, work, args.from_step)
        if resume:
            print(f"{step.name}: continuing from its last checkpoint in {out}")
        elif out.exists():
            print(f"{step.name}: removing {out} (left by an earlier run) to run the step afresh")
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        argv = recipe.command(step, work, resume=resume)
        print(f"[{i + 1}/{total}] {step.name}" + (f": {step.note}" if step.note else ""))
        print("  " + shlex.join(["cosmos-aloha", *argv]), flush=True)
        begin = time.perf_counter()
        rc = main(["-v", *argv] if args.verbose else argv)
        seconds = time.perf_counter() - begin
        if rc != 0:
            again = shlex.join(["cosmos-aloha", "recipe", str(args.recipe), "--out", str(work)])
            print(f"error: recipe step {step.name!r} failed (exit {rc}) after {seconds / 60:.1f} min; {i} of {total} "
                  f"steps finished. Fix the cause and run `{again}` again: it resumes at {step.name}.",
                  file=sys.stderr)
            return rc
        recipe.mark_finished(step, work, argv, seconds)
        left = total - i - 1
        print(f"[{i + 1}/{total}] {step.name} finished in {seconds / 60:.1f} min; "
              f"{left} step{'s' if left != 1 else ''} left", flush=True)
    path = recipe.write_checkpoint(work)
    print(f"recipe {recipe.name}: checkpoint {path} (deploy {json.dumps(recipe.deploy.to_dict())})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recipe", help="run a training recipe: every step from demos to the deployed checkpoint, resumable",
        description="Run the steps of a recipe file in order (sim demos, train-vae, train), each as the "
                    "cosmos-aloha command it names, and write the last model with the recipe's deploy section "
                    "to WORK/<recipe name>. A finished step leaves WORK/<step>.done; running the same command "
                    "again resumes after the last finished step. Format: cosmos_policy_core/train/recipe.py.",
    )
    p.add_argument("recipe", help="recipe JSON file, e.g. models/aloha_sim_transfer_cube_small/recipe/recipe.json")
    p.add_argument("--out", required=True, metavar="WORK",
                   help="work directory: WORK/<step> per step, WORK/<step>.done when it finished, the checkpoint "
                        "WORK/<recipe name>")
    p.add_argument("--dry-run", action="store_true",
                   help="print each step's command and whether it is finished; run nothing")
    p.add_argument("--from", dest="from_step", metavar="STEP",
                   help="run STEP and every step after it again, even if they finished")
    p.set_defaults(func=_recipe)
