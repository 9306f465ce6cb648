"""Training recipes: the `cosmos-aloha` commands that produce a checkpoint, in order, and how it is deployed.
`cosmos-aloha recipe FILE --out WORK` runs one (cli/recipe.py).

A recipe is a JSON object:

    {"name": "my_policy",
     "description": "what it makes",
     "steps": [
       {"name": "demos", "run": "sim demos", "args": {"task": "transfer_cube", "episodes": 40, "raw": true}},
       {"name": "vae", "run": "train-vae", "args": {"data": "@demos", "config": "small", "steps": 1357}},
       {"name": "stage1", "run": "train", "note": "why this step is here",
        "args": {"data": "@demos", "config": "stage1_train_config.json", "vae": "@vae"}},
       {"name": "stage2", "run": "train",
        "args": {"data": "@demos", "config": "stage2_train_config.json", "vae": "@vae", "init": "@stage1",
                 "steps": 600}}],
     "deploy": {"execution": "temporal_ensemble", "ensemble_decay": 0.01, "query_every_steps": 5,
                "num_steps": 10, "crop_area": null}}

Each step runs one command (`run`: one of STEP_KINDS) with `args` spelled as its command-line options
without the leading dashes: a string or number becomes `--key value`, `true` a bare `--key`, `false` or
`null` leaves the option out; `note` (optional) is shown with the command. An option that takes several
values (`train`'s `data`) may be a list: `"data": ["@demos", "@more_demos"]`. A step's output is
WORK/<step name> (the runner passes `--out`). A value `"@name"` is the output of the earlier step `name`: a
demos or VAE directory, or for a `train` step its final model (WORK/<name>/model). Relative paths are
relative to the recipe file's directory. The last step must be a `train` step: its model, with the recipe's
`deploy` section (checkpoint.DeploySettings) and the commands that ran in its metadata, becomes
WORK/<recipe name>.

A finished step leaves WORK/<step name>.done (its command and duration); a run that stops resumes after the
last finished step, and a `train` step that stopped part-way continues from its last checkpoint (`--resume`).
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cosmos_policy_core import atomic
from cosmos_policy_core.checkpoint import DeploySettings, load_checkpoint_dir, save_checkpoint_dir
from cosmos_policy_core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

PROGRAM = "cosmos-aloha"
REFERENCE = "@"
DONE_SUFFIX = ".done"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StepKind:
    """What the runner knows about one command: how it is spelled, which options name files, what it leaves."""

    argv: tuple[str, ...]                   # the subcommand, e.g. ("sim", "demos")
    path_args: tuple[str, ...] = ()         # options whose value is a file or directory
    output: str = ""                        # what "@step" means: WORK/<step>/<output>
    resumable: bool = False                 # a part-way run continues with --resume
    list_args: tuple[str, ...] = ()         # options that take several values (a JSON list in the recipe)


STEP_KINDS: dict[str, StepKind] = {
    "sim demos": StepKind(("sim", "demos")),
    "train-vae": StepKind(("train-vae",), path_args=("data", "init")),
    "train": StepKind(("train",), path_args=("data", "config", "init", "vae", "rollouts", "text-embeddings"),
                      output="model", resumable=True, list_args=("data",)),
}


@dataclass(frozen=True)
class RecipeStep:
    name: str
    run: str                                # a key of STEP_KINDS
    args: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""                          # why the step is there, shown with its command

    @property
    def kind(self) -> StepKind:
        return STEP_KINDS[self.run]

    def spec(self) -> dict:
        """The step as the recipe writes it: what a finished step's marker must match."""
        return {"run": self.run, "args": dict(self.args)}


@dataclass(frozen=True)
class Recipe:
    """A parsed, checked recipe file; `command` turns a step into the argv it runs in a work directory."""

    name: str
    steps: tuple[RecipeStep, ...]
    deploy: DeploySettings
    path: Path
    description: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read and check a recipe: every problem found (unknown step kinds, references to outputs not made
        before, missing files, malformed values) is reported together in one ConfigError."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; pass a recipe JSON file "
                              "(e.g. models/aloha_sim_transfer_cube_small/recipe/recipe.json)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"recipe {path} is not valid JSON ({e})") from e
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> "Recipe":
        if not isinstance(data, Mapping):
            raise ConfigError(f"recipe {path} must hold a JSON object with \"name\", \"steps\" and \"deploy\"")
        problems: list[str] = []
        unknown = sorted(set(data) - {"name", "description", "steps", "deploy"})
        if unknown:
            problems.append(f"unknown top-level key(s) {unknown}; known: name, description, steps, deploy")
        name = data.get("name")
        if not (isinstance(name, str) and _NAME.match(name)):
            problems.append(f"\"name\" must be a file name (letters, digits, _ . -), got {name!r}: "
                            "the checkpoint is written to WORK/<name>")
        deploy = DeploySettings()
        if "deploy" not in data:
            problems.append("no \"deploy\" section: say how the checkpoint is meant to run (checkpoint.DeploySettings "
                            "fields: execution, ensemble_decay, query_every_steps, num_steps, crop_area)")
        else:
            try:
                deploy = DeploySettings.from_dict(data["deploy"], source="\"deploy\"")
            except CheckpointError as e:
                problems.append(str(e))
        steps = _parse_steps(data.get("steps"), path.parent, problems)
        if isinstance(name, str) and name in {s.name for s in steps}:
            problems.append(f"step name {name!r} is also the recipe's name; the checkpoint needs WORK/{name}")
        if steps and steps[-1].run != "train":
            problems.append(f"the last step ({steps[-1].name!r}) must be a \"train\" step: its model becomes the "
                            "checkpoint")
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            raise ConfigError(f"recipe {path} has {len(problems)} problem(s), nothing was run:\n{listed}")
        return cls(name=name, steps=tuple(steps), deploy=deploy, path=path,
                   description=str(data.get("description", "")))

    # --- what runs -------------------------------------------------------------------------------
    def step(self, name: str) -> RecipeStep:
        for s in self.steps:
            if s.name == name:
                return s
        raise ConfigError(f"recipe {self.path} has no step {name!r}; its steps: {[s.name for s in self.steps]}")

    def output(self, name: str, work: str | Path) -> Path:
        """What `@name` stands for in the work directory."""
        step = self.step(name)
        out = Path(work) / step.name
        return out / step.kind.output if step.kind.output else out

    def command(self, step: RecipeStep, work: str | Path, resume: bool = False) -> list[str]:
        """The argv (after `cosmos-aloha`) of one step, its references and relative paths resolved."""
        argv = list(step.kind.argv)
        for key, value in step.args.items():
            if value is None or value is False:
                continue
            if value is True:
                argv.append(f"--{key}")
                continue
            values = value if isinstance(value, list) else [value]
            argv += [f"--{key}", *(self._resolve(step, key, v, work) for v in values)]
        argv += ["--out", str(Path(work) / step.name)]
        if resume:
            argv.append("--resume")
        return argv

    def _resolve(self, step: RecipeStep, key: str, value: Any, work: str | Path) -> str:
        """One option value as the command gets it: `@name` the output of step `name`, a path relative to the
        recipe file's directory."""
        if isinstance(value, str) and value.startswith(REFERENCE):
            return str(self.output(value[len(REFERENCE):], work))
        if key in step.kind.path_args and not _is_preset(step.run, key, value):
            return str(self.path.parent / value)
        return str(value)

    def can_resume(self, step: RecipeStep, work: str | Path) -> bool:
        """Whether a part-way run of `step` left checkpoints to continue from."""
        checkpoints = Path(work) / step.name / "checkpoints"
        return step.kind.resumable and checkpoints.is_dir() and any(checkpoints.iterdir())

    # --- progress in the work directory ----------------------------------------------------------
    def marker(self, step: RecipeStep, work: str | Path) -> Path:
        return Path(work) / f"{step.name}{DONE_SUFFIX}"

    def finished(self, work: str | Path, before: str | None = None) -> list[RecipeStep]:
        """The steps finished in `work`, in order, up to the first that is not (or up to the step `before`): a
        step only counts when every step before it does, since its inputs came from them. A step finished with
        other arguments than the recipe's is an error (its outputs would not be this recipe's)."""
        end = len(self.steps) if before is None else self.steps.index(self.step(before))
        done = []
        for step in self.steps[:end]:
            marker = self.marker(step, work)
            if not marker.is_file():
                break
            try:
                recorded = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{marker} is unreadable ({e}); delete it to run step {step.name!r} again") from e
            if {"run": recorded.get("run"), "args": recorded.get("args")} != step.spec():
                raise ConfigError(
                    f"{marker}: step {step.name!r} finished with other arguments than {self.path} gives "
                    f"(then: {recorded.get('command')!r}); pass --from {step.name} to run it and the steps after "
                    "it again, or choose another --out")
            done.append(step)
        return done

    def mark_finished(self, step: RecipeStep, work: str | Path, argv: list[str], seconds: float) -> Path:
        record = {**step.spec(), "step": step.name, "command": shlex.join([PROGRAM, *argv]),
                  "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return atomic.write_text(self.marker(step, work), json.dumps(record, indent=2) + "\n")

    def forget(self, steps: list[RecipeStep], work: str | Path) -> None:
        """Drop the markers of `steps` so that they run again."""
        for step in steps:
            self.marker(step, work).unlink(missing_ok=True)

    # --- the product -----------------------------------------------------------------------------
    def write_checkpoint(self, work: str | Path) -> Path:
        """WORK/<name>: the last step's model with the recipe's deploy section and the commands that made it."""
        work = Path(work)
        last = self.steps[-1]
        ckpt = load_checkpoint_dir(self.output(last.name, work))
        ckpt.deploy = self.deploy
        commands = []
        for step in self.steps:
            marker = self.marker(step, work)
            recorded = json.loads(marker.read_text()) if marker.is_file() else {}
            commands.append({"step": step.name, "command": recorded.get("command"),
                             "seconds": recorded.get("seconds")})
        ckpt.metadata = {**ckpt.metadata, "recipe": {"name": self.name, "file": self.path.name, "steps": commands}}
        out = save_checkpoint_dir(work / self.name, ckpt)
        log.info("recipe %s: checkpoint %s (deploy %s)", self.name, out, self.deploy.to_dict())
        return out


def _is_preset(run: str, key: str, value: Any) -> bool:
    """`train --config tiny|small|2b` names a preset, not a file."""
    if run == "train" and key == "config":
        from cosmos_policy_core.train.config import PRESETS

        return value in PRESETS
    return False


def _check_value(run: Any, key: str, value: Any, where: str, base: Path, outputs: set[str],
                 problems: list[str]) -> None:
    """A reference must name an earlier step, a path option an existing file (relative to the recipe)."""
    if isinstance(value, str) and value.startswith(REFERENCE):
        if value[len(REFERENCE):] not in outputs:
            problems.append(f"{where}: option {key!r} refers to {value!r}, which no earlier step makes; "
                            f"earlier steps: {sorted(outputs) or 'none'}")
    elif (run in STEP_KINDS and key in STEP_KINDS[run].path_args and isinstance(value, str)
          and not _is_preset(run, key, value) and not (base / value).exists()):
        problems.append(f"{where}: option {key!r} names {base / value}, which does not exist "
                        "(relative paths are relative to the recipe file)")


def _parse_steps(raw: Any, base: Path, problems: list[str]) -> list[RecipeStep]:
    if not isinstance(raw, list) or not raw:
        problems.append("\"steps\" must be a non-empty list of {\"name\", \"run\", \"args\"} objects")
        return []
    steps: list[RecipeStep] = []
    outputs: set[str] = set()
    for i, entry in enumerate(raw, 1):
        where = f"step {i}"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a JSON object with \"name\", \"run\" and \"args\"")
            continue
        name = entry.get("name")
        if isinstance(name, str) and _NAME.match(name):
            where = f"step {i} ({name!r})"
        else:
            problems.append(f"{where}: \"name\" must be a file name (letters, digits, _ . -), got {name!r}: "
                            "its output is WORK/<name>")
            name = None
        if name is not None and name in outputs:
            problems.append(f"{where}: the name {name!r} is used by an earlier step; names must be unique")
        extra = sorted(set(entry) - {"name", "run", "args", "note"})
        if extra:
            problems.append(f"{where}: unknown key(s) {extra}; a step has name, run, args and note")
        run = entry.get("run")
        if run not in STEP_KINDS:
            problems.append(f"{where}: unknown step kind \"run\": {run!r}; known: {sorted(STEP_KINDS)}")
        args = entry.get("args", {})
        if not isinstance(args, Mapping):
            problems.append(f"{where}: \"args\" must be a JSON object of command-line options, got {args!r}")
            args = {}
        for key, value in args.items():
            if key == "out" or key == "resume":
                problems.append(f"{where}: \"{key}\" is set by the recipe runner (the output is WORK/<step name>, "
                                "part-way train steps resume by themselves); remove it")
            elif key.startswith("-"):
                problems.append(f"{where}: write option {key!r} without its dashes, as \"{key.lstrip('-')}\"")
            elif isinstance(value, list):
                listed = STEP_KINDS[run].list_args if run in STEP_KINDS else ()
                if key not in listed:
                    problems.append(f"{where}: option {key!r} takes one value, got the list {json.dumps(value)}"
                                    + (f" (lists: {', '.join(listed)})" if listed else ""))
                elif not value or not all(isinstance(v, str) for v in value):
                    problems.append(f"{where}: option {key!r} must be a non-empty list of strings, "
                                    f"got {json.dumps(value)}")
                else:
                    for v in value:
                        _check_value(run, key, v, where, base, outputs, problems)
            elif not (value is None or isinstance(value, (str, bool, int, float))):
                problems.append(f"{where}: option {key!r} must be a string, number, true, false or null, "
                                f"got {json.dumps(value)}")
            else:
                _check_value(run, key, value, where, base, outputs, problems)
        note = entry.get("note", "")
        if not isinstance(note, str):
            problems.append(f"{where}: \"note\" must be a string")
            note = ""
        if name is not None:
            outputs.add(name)
            if run in STEP_KINDS:
                steps.append(RecipeStep(name=name, run=run, args=dict(args), note=note))
    return steps


__all__ = ["Recipe", "RecipeStep", "StepKind", "STEP_KINDS", "PROGRAM"]
