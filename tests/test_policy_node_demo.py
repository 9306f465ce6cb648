"""`cosmos-aloha demo` picks its chunk source: the shipped policy checkpoint when present, else the scripted replay."""
from __future__ import annotations

import pytest

from cosmos_policy_core.cli import demo
from cosmos_policy_core.errors import ConfigError


def test_demo_uses_the_shipped_checkpoint_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "MODELS_DIR", tmp_path)
    assert demo.demo_checkpoint("auto", "transfer_cube") is None            # nothing shipped: replay
    shipped = tmp_path / demo.SHIPPED_CHECKPOINTS["transfer_cube"]
    shipped.mkdir()
    assert demo.demo_checkpoint("auto", "transfer_cube") is None            # an empty directory is no checkpoint
    (shipped / "config.json").write_text("{}")
    assert demo.demo_checkpoint("auto", "transfer_cube") == shipped
    assert demo.demo_checkpoint("auto", "insertion") is None                # no model for that task
    assert demo.demo_checkpoint("none", "transfer_cube") is None
    assert demo.demo_checkpoint(str(shipped), "insertion") == shipped
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        demo.demo_checkpoint(str(tmp_path / "missing"), "transfer_cube")


def test_auto_execution_follows_the_checkpoints_deploy_section(tmp_path):
    """temporal_ensemble:=auto (the default of launch, bringup and the demo) is what config.json's deploy says."""
    import json

    from cosmos_aloha import graph

    shipped = demo.MODELS_DIR / demo.SHIPPED_CHECKPOINTS["transfer_cube"]
    deploy = json.loads((shipped / "config.json").read_text())["deploy"]
    assert deploy["execution"] == "temporal_ensemble"
    auto = graph.execution_parameters(graph.resolve_arguments({"checkpoint": str(shipped)}))
    assert auto == {"policy": {"execution": "temporal_ensemble"},
                    "executor": {"temporal_ensemble": True, "ensemble_decay": deploy["ensemble_decay"]}}
    forced = graph.execution_parameters(graph.resolve_arguments({"checkpoint": str(shipped),
                                                                 "temporal_ensemble": "false"}))
    assert forced["policy"] == {"execution": "whole_chunks"} and forced["executor"]["temporal_ensemble"] is False
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"metadata": {}}))      # no deploy section: the reference's way
    auto_plain = graph.execution_parameters(graph.resolve_arguments({"checkpoint": str(plain)}))
    assert auto_plain["policy"] == {"execution": "whole_chunks"}
    assert graph.execution_parameters(graph.resolve_arguments({}))["executor"] == {"temporal_ensemble": False}
