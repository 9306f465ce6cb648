"""Deploy settings travel with the checkpoint: config.json's `deploy` section, read by everything that runs it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmos_policy_core.checkpoint import DeploySettings, load_checkpoint_dir, save_checkpoint_dir
from cosmos_policy_core.errors import CheckpointError, ConfigError
from cosmos_policy_core.runtime.rollout import EvalConfig

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "aloha_sim_transfer_cube_small"


def _config_dir(tmp_path, name, **config):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"format": "cosmos_aloha.checkpoint", **config}))
    return d


def test_the_shipped_checkpoint_carries_its_tuned_deployment():
    deploy = DeploySettings.from_checkpoint(SHIPPED)
    assert deploy.execution == "temporal_ensemble" and deploy.temporal_ensemble
    assert (deploy.ensemble_decay, deploy.query_every_steps, deploy.crop_area) == (0.2, 5, None)
    assert deploy.executor_ensemble_decay == 0.2


def test_defaults_are_the_reference_deployment_and_old_directories_keep_what_training_implies(tmp_path):
    reference = DeploySettings()
    assert (reference.execution, reference.query_every_steps, reference.num_steps, reference.crop_area) == \
        ("whole_chunks", 50, 10, 0.9)
    assert reference.executor_ensemble_decay is None
    assert DeploySettings.from_checkpoint(tmp_path / "policy.pt") == reference          # no config.json
    plain = _config_dir(tmp_path, "plain", metadata={"train_config": {"augment": None}})
    assert DeploySettings.from_checkpoint(plain) == DeploySettings(crop_area=None)
    augmented = _config_dir(tmp_path, "aug", metadata={"train_config": {"augment": {"crop_area": 0.9}}})
    assert DeploySettings.from_checkpoint(augmented) == reference


def test_overrides_replace_given_fields_only():
    deploy = DeploySettings(execution="temporal_ensemble", query_every_steps=5)
    assert deploy.with_overrides(num_steps=1, crop_area=None) == DeploySettings(
        execution="temporal_ensemble", query_every_steps=5, num_steps=1)
    assert deploy.with_overrides(execution="whole_chunks").executor_ensemble_decay is None
    with pytest.raises(ConfigError, match="unknown deploy setting"):
        deploy.with_overrides(decay=0.1)


@pytest.mark.parametrize("section, message", [
    ({"execution": "sometimes"}, "deploy.execution must be one of"),
    ({"ensemble_decay": float("nan")}, "ensemble_decay must be a finite number"),
    ({"query_every_steps": 0}, "query_every_steps must be an integer >= 1"),
    ({"num_steps": 2.5}, "num_steps must be an integer"),
    ({"crop_area": 1.5}, "crop_area must be null or in"),
    ({"blend": 3}, "unknown deploy setting"),
    ("fast", "must be a JSON object"),
])
def test_a_bad_deploy_section_names_the_file_and_the_setting(tmp_path, section, message):
    d = _config_dir(tmp_path, "bad", deploy=section)
    with pytest.raises(CheckpointError, match=message) as info:
        DeploySettings.from_checkpoint(d)
    assert str(d / "config.json") in str(info.value)


def test_the_section_round_trips_through_a_checkpoint_directory(tmp_path):
    from cosmos_policy_core.testing import build_random_checkpoint

    ckpt = load_checkpoint_dir(build_random_checkpoint(tmp_path / "random", image_size=64))
    ckpt.deploy = DeploySettings(execution="temporal_ensemble", ensemble_decay=0.05, query_every_steps=3,
                                 num_steps=2, crop_area=None)
    save_checkpoint_dir(tmp_path / "ckpt", ckpt)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["deploy"]["query_every_steps"] == 3
    assert load_checkpoint_dir(tmp_path / "ckpt").deploy == ckpt.deploy
    assert DeploySettings.from_checkpoint(tmp_path / "ckpt") == ckpt.deploy


def test_sim_eval_takes_the_checkpoints_execution_unless_told_otherwise():
    ensemble = DeploySettings(execution="temporal_ensemble", ensemble_decay=0.02, query_every_steps=5, num_steps=3)
    cfg = EvalConfig().resolved(ensemble)
    assert (cfg.execution, cfg.execute_steps, cfg.ensemble_decay, cfg.num_steps) == ("temporal_ensemble", 5, 0.02, 3)
    cfg = EvalConfig(execution="whole_chunks").resolved(ensemble)
    assert (cfg.execution, cfg.execute_steps, cfg.ensemble_decay) == ("whole_chunks", 50, None)
    cfg = EvalConfig(execute_steps=10, num_steps=1).resolved(ensemble)
    assert (cfg.execute_steps, cfg.ensemble_decay, cfg.num_steps) == (10, 0.02, 1)
    whole = DeploySettings()
    cfg = EvalConfig().resolved(whole)
    assert (cfg.execution, cfg.execute_steps, cfg.ensemble_decay, cfg.num_steps) == ("whole_chunks", 50, None, 10)
    cfg = EvalConfig(ensemble_decay=0.01).resolved(whole)      # a decay alone asks for ensembling
    assert (cfg.execution, cfg.execute_steps, cfg.ensemble_decay) == ("temporal_ensemble", 5, 0.01)
