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
    assert demo.demo_temporal_ensemble("auto", shipped)                     # measured better for the shipped one
    other = tmp_path / "elsewhere" / demo.SHIPPED_CHECKPOINTS["transfer_cube"]
    assert not demo.demo_temporal_ensemble("auto", other)                   # a user's checkpoint: the reference's way
    assert demo.demo_temporal_ensemble("true", other) and not demo.demo_temporal_ensemble("false", shipped)
