"""`cosmos-aloha act`, `export` and `text-embed` from the command line on a tiny random checkpoint."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from cosmos_policy_core.cli import main
from cosmos_policy_core.testing import build_random_checkpoint, random_observation


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", image_size=64, text_len=16)


def test_act_writes_actions_value_and_grid(ckpt, tmp_path, capsys):
    obs = random_observation(height=90, width=120, seed=3)
    files = []
    for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
        files.append(str(tmp_path / f"{cam}.png"))
        Image.fromarray(obs.images[cam]).save(files[-1])
    (tmp_path / "proprio.json").write_text(json.dumps({"qpos": [0.1] * 14}))
    out = tmp_path / "out"
    rc = main(["act", "--checkpoint", str(ckpt), "--images", *files, "--proprio", str(tmp_path / "proprio.json"),
               "--task", "fold shirt", "--seed", "2", "--steps", "1", "--out", str(out)])
    assert rc == 0
    assert "value:" in capsys.readouterr().out
    actions = np.load(out / "actions.npy")
    assert actions.shape == (50, 14)
    np.testing.assert_allclose(np.array(json.loads((out / "actions.json").read_text())), actions)
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["value"] <= 1.0 and result["seed"] == 2
    grid = np.asarray(Image.open(out / "frames.png"))
    assert grid.shape == (64 * 2 + 4, 64 * 3, 3)  # current row over predicted row


def test_act_unknown_task_is_a_clean_error(ckpt, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    (tmp_path / "p.json").write_text(json.dumps([0.0] * 14))
    rc = main(["act", "--checkpoint", str(ckpt), "--images", str(img), str(img), str(img),
               "--proprio", str(tmp_path / "p.json"), "--task", "juggle"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown task 'juggle'" in err and "'fold shirt'" in err


def test_export_cli(ckpt, tmp_path, capsys):
    rc = main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--steps", "1", "--batch", "1",
               "--no-vae", "--out", str(tmp_path / "onnx")])
    assert rc == 0 and (tmp_path / "onnx" / "denoiser_b1.onnx").is_file()
    assert "max |diff|" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_text_embed_without_transformers_says_what_to_install(tmp_path, capsys):
    rc = main(["text-embed", "--t5", str(tmp_path), "--tasks", "fold shirt", "--out", str(tmp_path / "t.safetensors")])
    assert rc == 2 and "transformers" in capsys.readouterr().err
