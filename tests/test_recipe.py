"""`cosmos-aloha recipe`: a recipe file runs every step through the CLI, resumes after a failure, refuses bad
recipes up front, and the shipped checkpoint's recipe names the commands and configs that made it."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import cosmos_policy_core.cli as cli
from cosmos_policy_core.checkpoint import DeploySettings, load_checkpoint_dir
from cosmos_policy_core.train.recipe import Recipe

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small"
INSERTION = SHIPPED.parent / "aloha_sim_insertion_small"
DEPLOY = {"execution": "temporal_ensemble", "ensemble_decay": 0.02, "query_every_steps": 4, "num_steps": 3,
          "crop_area": None}


def tiny_recipe(root: Path, **changes) -> Path:
    """One scripted demo at 32², a tiny VAE, two one-or-two-step DiT stages chained by --init."""
    from cosmos_policy_core.train.config import TrainConfig
    from cosmos_policy_core.train.samples import SampleConfig

    root.mkdir(parents=True, exist_ok=True)
    cfg = replace(TrainConfig.tiny(), augment=None, latent_cache="memory", samples=SampleConfig(step_stride=100),
                  val_episodes=0, eval_every=0, eval_samples=1, max_steps=1, checkpoint_every=1)
    (root / "tiny_train.json").write_text(json.dumps(cfg.to_dict()))
    quiet = {"no-progress": True}
    recipe = {
        "name": "tiny_policy",
        "steps": [
            {"name": "demos", "run": "sim demos", "args": {"episodes": 1, "height": 32, "width": 32}},
            {"name": "vae", "run": "train-vae", "note": "a tiny VAE",
             "args": {"data": "@demos", "config": "tiny", "steps": 1, "batch": 1, "image-size": 16,
                      "device": "cpu", **quiet}},
            {"name": "a", "run": "train",
             "args": {"data": "@demos", "config": "tiny_train.json", "vae": "@vae", **quiet}},
            {"name": "b", "run": "train",
             "args": {"data": "@demos", "config": "tiny_train.json", "vae": "@vae", "init": "@a", "steps": 2, **quiet}},
        ],
        "deploy": DEPLOY,
    }
    recipe.update(changes)
    path = root / "recipe.json"
    path.write_text(json.dumps(recipe, indent=1))
    return path


def test_a_recipe_runs_every_step_resumes_after_a_failure_and_writes_the_deployed_checkpoint(tmp_path, monkeypatch,
                                                                                            capsys):
    pytest.importorskip("mujoco")
    recipe = tiny_recipe(tmp_path / "r")
    work = tmp_path / "work"
    real_main = cli.main
    ran = []

    def failing_in_b(argv):
        # Step b stops after its first training step (a checkpoint at step 1) and reports a failure.
        ran.append(Path(argv[argv.index("--out") + 1]).name)
        if ran[-1] == "b":
            assert real_main([*argv, "--steps", "1"]) == 0
            return 1
        return real_main(argv)

    monkeypatch.setattr(cli, "main", failing_in_b)
    assert real_main(["recipe", str(recipe), "--out", str(work)]) == 1
    captured = capsys.readouterr()
    assert ran == ["demos", "vae", "a", "b"]
    assert "[3/4] a finished" in captured.out and "2 steps left" in captured.out
    assert "step 'b' failed (exit 1)" in captured.err and "resumes at b" in captured.err
    assert sorted(p.name for p in work.glob("*.done")) == ["a.done", "demos.done", "vae.done"]
    assert (work / "b" / "checkpoints").is_dir() and not (work / "tiny_policy").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("*.done")}

    # Run again: the finished steps are not repeated, b continues from its checkpoint to step 2.
    calls = []
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or real_main(argv))
    assert real_main(["recipe", str(recipe), "--out", str(work)]) == 0
    out = capsys.readouterr().out
    assert "resuming after a (3 of 4 steps finished" in out and "b: continuing from its last checkpoint" in out
    assert len(calls) == 1 and calls[0][:1] == ["train"] and calls[0][-1] == "--resume"
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.done") if p.name != "b.done"} == stamps
    marker = json.loads((work / "b.done").read_text())
    assert marker["command"].startswith("cosmos-aloha train --data ") and f"--init {work / 'a' / 'model'}" in \
        marker["command"]

    from cosmos_policy_core.runtime.policy import CosmosPolicy

    final = work / "tiny_policy"
    assert f"checkpoint {final}" in out
    ckpt = load_checkpoint_dir(final)
    assert ckpt.deploy == DeploySettings(**DEPLOY) and DeploySettings.from_checkpoint(final) == ckpt.deploy
    assert ckpt.metadata["step"] == 2
    assert [s["step"] for s in ckpt.metadata["recipe"]["steps"]] == ["demos", "vae", "a", "b"]
    assert ckpt.metadata["recipe"]["steps"][0]["command"].startswith("cosmos-aloha sim demos --episodes 1")
    policy = CosmosPolicy.from_checkpoint(final)
    assert policy.config.num_steps == 3 and policy.config.crop_area is None

    # Everything finished: a third run only rewrites the checkpoint.
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail(f"ran {argv}"))
    assert real_main(["recipe", str(recipe), "--out", str(work)]) == 0
    assert "4 of 4 steps finished" in capsys.readouterr().out

    # --from b: b runs again from scratch (its old run directory removed, no --resume), nothing before it.
    calls.clear()
    (work / "b" / "left_over").write_text("from the earlier run")
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or real_main(argv))
    assert real_main(["recipe", str(recipe), "--out", str(work), "--from", "b"]) == 0
    assert "b: removing" in capsys.readouterr().out
    assert len(calls) == 1 and "--resume" not in calls[0]
    assert not (work / "b" / "left_over").exists() and load_checkpoint_dir(final).metadata["step"] == 2


def test_dry_run_lists_the_commands_and_what_is_finished(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r")
    work = tmp_path / "work"
    assert cli.main(["recipe", str(recipe), "--out", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[1/4] demos (to run)" in out and "# a tiny VAE" in out
    assert (f"cosmos-aloha train --data {work / 'demos'} --config {tmp_path / 'r' / 'tiny_train.json'} "
            f"--vae {work / 'vae'} --init {work / 'a' / 'model'} --steps 2 --no-progress --out {work / 'b'}") in out
    assert not work.exists()

    # A marker that matches the recipe counts as finished; --from runs a finished step again.
    parsed = Recipe.load(recipe)
    work.mkdir()
    parsed.mark_finished(parsed.steps[0], work, parsed.command(parsed.steps[0], work), 1.0)
    assert cli.main(["recipe", str(recipe), "--out", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[1/4] demos (finished)" in out and "[2/4] vae (to run)" in out
    assert cli.main(["recipe", str(recipe), "--out", str(work), "--dry-run", "--from", "demos"]) == 0
    assert "[1/4] demos (to run)" in capsys.readouterr().out


def test_a_list_of_data_directories_becomes_one_option_with_several_values(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r")
    changed = json.loads(recipe.read_text())
    changed["steps"].insert(1, {"name": "more", "run": "sim demos", "args": {"episodes": 1, "seed": 7}})
    changed["steps"][-1]["args"]["data"] = ["@demos", "@more"]
    recipe.write_text(json.dumps(changed))
    work = tmp_path / "work"
    assert cli.main(["recipe", str(recipe), "--out", str(work), "--dry-run"]) == 0
    assert f"cosmos-aloha train --data {work / 'demos'} {work / 'more'} --config" in capsys.readouterr().out


def test_a_step_finished_with_other_arguments_is_refused(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r")
    work = tmp_path / "work"
    work.mkdir()
    parsed = Recipe.load(recipe)
    parsed.mark_finished(parsed.steps[0], work, [], 1.0)
    changed = json.loads(recipe.read_text())
    changed["steps"][0]["args"]["episodes"] = 2
    recipe.write_text(json.dumps(changed))
    assert cli.main(["recipe", str(recipe), "--out", str(work)]) == 2
    err = capsys.readouterr().err
    assert "step 'demos' finished with other arguments" in err and "--from demos" in err
    assert not (work / "demos").exists()


def _step(name, run="train", **args):
    return {"name": name, "run": run, "args": args}


@pytest.mark.parametrize("changes, message", [
    ({"steps": [_step("demos", "sim demo"), _step("a", config="tiny_train.json", data="@demos")]},
     "unknown step kind \"run\": 'sim demo'"),
    ({"steps": [_step("a", config="tiny_train.json", data="@demos")]},
     "refers to '@demos', which no earlier step makes"),
    ({"steps": [_step("demos", "sim demos"), _step("a", config="missing.json", data="@demos")]},
     "missing.json, which does not exist"),
    ({"steps": [_step("demos", "sim demos"), _step("a", config="tiny_train.json", data="@demos", lr=0.1)]},
     "step 'a' (train): unrecognized arguments: --lr 0.1"),
    ({"steps": [_step("demos", "sim demos", out="x"), _step("a", config="tiny_train.json", data="@demos")]},
     "\"out\" is set by the recipe runner"),
    ({"steps": [_step("demos", "sim demos", episodes=[1, 2]), _step("a", config="tiny", data="@demos")]},
     "option 'episodes' takes one value, got the list [1, 2]"),
    ({"steps": [_step("demos", "sim demos", episodes={"n": 1}), _step("a", config="tiny", data="@demos")]},
     "option 'episodes' must be a string, number, true, false or null"),
    ({"steps": [_step("demos", "sim demos"), _step("a", config="tiny", data=["@demos", "@more"])]},
     "option 'data' refers to '@more', which no earlier step makes"),
    ({"steps": [_step("demos", "sim demos"), _step("a", config="tiny", data=[])]},
     "option 'data' must be a non-empty list of strings"),
    ({"steps": [_step("demos", "sim demos"), _step("demos", config="tiny", data="@demos")]},
     "the name 'demos' is used by an earlier step"),
    ({"steps": [_step("demos", "sim demos")]}, "the last step ('demos') must be a \"train\" step"),
    ({"deploy": {"execution": "sometimes"}}, "deploy.execution must be one of"),
])
def test_bad_recipes_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, changes, message):
    recipe = tiny_recipe(tmp_path / "r", **changes)
    real_main = cli.main
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail(f"ran {argv}"))
    rc = real_main(["recipe", str(recipe), "--out", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "nothing was run" in err, err
    assert not (tmp_path / "work").exists()


def test_a_recipe_without_deploy_or_steps_gets_one_message_each(tmp_path):
    from cosmos_policy_core.errors import ConfigError

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"name": "x y", "stages": []}))
    with pytest.raises(ConfigError) as e:
        Recipe.load(path)
    text = str(e.value)
    assert "4 problem(s)" in text and "unknown top-level key(s) ['stages']" in text
    assert "\"name\" must be a file name" in text and "no \"deploy\" section" in text and "\"steps\" must be" in text
    path.write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        Recipe.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.load(tmp_path / "none.json")


def test_the_shipped_recipe_names_the_stages_that_made_the_shipped_checkpoint(tmp_path, capsys):
    path = SHIPPED / "recipe" / "recipe.json"
    recipe = Recipe.load(path)
    assert recipe.name == SHIPPED.name
    assert [s.name for s in recipe.steps] == ["demos", "vae64", "vae_objects_a", "vae_objects", "stage1", "stage2",
                                              "stage3a", "stage3b", "stage3c", "stage3d"]
    shipped_config = json.loads((SHIPPED / "config.json").read_text())
    assert recipe.deploy.to_dict() == shipped_config["deploy"]
    for step in recipe.steps:
        if step.run == "train":
            assert (path.parent / step.args["config"]).is_file()
    # the shipped stage lengths: 3a continued from its step-600 checkpoint, 3b and 3c stopped by a time limit
    assert {s.name: s.args.get("steps") for s in recipe.steps if s.run == "train"} == {
        "stage1": None, "stage2": None, "stage3a": 600, "stage3b": 2799, "stage3c": 1351, "stage3d": None}
    assert json.loads((path.parent / "stage3d_train_config.json").read_text())["max_steps"] == \
        shipped_config["metadata"]["step"] == 4000

    work = tmp_path / "work"
    assert cli.main(["recipe", str(path), "--out", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    config = path.parent / "stage3b_train_config.json"
    assert (f"cosmos-aloha sim demos --task transfer_cube --episodes 40 --seed 0 --height 224 --width 224 --raw "
            f"--out {work / 'demos'}") in out
    assert f"cosmos-aloha train-vae --data {work / 'demos'} --init {work / 'vae64'} " in out
    assert "--object-scenes 500 --object-fraction 0.75" in out
    assert (f"cosmos-aloha train --data {work / 'demos'} --config {config} --vae {work / 'vae_objects'} "
            f"--init {work / 'stage3a' / 'model'} --steps 2799 --out {work / 'stage3b'}") in out
    assert out.count("(to run)") == 10 and f"the checkpoint {work / SHIPPED.name}" in out
    assert not work.exists()


def test_the_insertion_recipe_fine_tunes_the_transfer_cube_policy(tmp_path, capsys):
    path = INSERTION / "recipe" / "recipe.json"
    recipe = Recipe.load(path)
    assert recipe.name == INSERTION.name
    assert [s.name for s in recipe.steps] == ["demos", "vae_objects_a", "vae_objects", "finetune"]
    shipped_config = json.loads((INSERTION / "config.json").read_text())
    assert recipe.deploy.to_dict() == shipped_config["deploy"]
    train = json.loads((path.parent / "finetune_train_config.json").read_text())
    assert train["max_steps"] == shipped_config["metadata"]["step"]
    # What a checkpoint may weigh to ship in this repository.
    assert sum(f.stat().st_size for f in INSERTION.glob("*.safetensors")) <= 25_000_000

    work = tmp_path / "work"
    assert cli.main(["recipe", str(path), "--out", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (f"cosmos-aloha sim demos --task insertion --episodes 50 --seed 0 --height 224 --width 224 --raw "
            f"--out {work / 'demos'}") in out
    init = path.parent / "../../aloha_sim_transfer_cube_small"
    assert f"cosmos-aloha train-vae --data {work / 'demos'} --init {init} " in out
    assert (f"cosmos-aloha train --data {work / 'demos'} --config {path.parent / 'finetune_train_config.json'} "
            f"--vae {work / 'vae_objects'} --init {init} --out {work / 'finetune'}") in out
    assert out.count("(to run)") == 4 and not work.exists()
