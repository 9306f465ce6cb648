"""Checkpoints: reference .pt loading with strict key checks, stats JSON, T5 pickle, our directory format."""
from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from cosmos_policy_core.checkpoint import (
    CosmosCheckpoint,
    DatasetStats,
    load_checkpoint_dir,
    load_reference_checkpoint,
    read_dataset_stats,
    read_reference_state_dict,
    read_t5_embeddings,
    read_text_embeddings,
    save_checkpoint_dir,
    to_reference_state_dict,
    write_dataset_stats,
    write_text_embeddings,
)
from cosmos_policy_core.diffusion import DiffusionConfig
from cosmos_policy_core.errors import CheckpointError
from cosmos_policy_core.layout import LatentLayout
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.dit import CosmosDiT


@pytest.fixture(scope="module")
def tiny_net() -> CosmosDiT:
    torch.manual_seed(0)
    net = CosmosDiT(ModelConfig.tiny())
    with torch.no_grad():  # non-trivial values everywhere, zero-initialised layers included
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def _reference_state(net: CosmosDiT) -> dict:
    """What a reference .pt holds: net.-prefixed bf16 weights plus keys that must be dropped."""
    sd = to_reference_state_dict(net)
    sd["net.pos_embedder.seq"] = torch.arange(128, dtype=torch.float)
    sd["net.pos_embedder.dim_spatial_range"] = torch.arange(10, dtype=torch.float)
    sd["net.accum_video_sample_counter"] = torch.tensor(12345, dtype=torch.int64)
    sd["net.accum_train_in_hours"] = torch.tensor(1.5)
    sd["net.blocks.0.self_attn.q_proj._extra_state"] = io.BytesIO(b"te-fp8-state")
    sd["net.blocks.1.mlp.layer1._extra_state"] = None
    sd["net_ema.t_embedding_norm.weight"] = torch.zeros(3)  # EMA copies are ignored
    return sd


def test_reference_pt_loads_strictly_and_drops_buffer_keys(tmp_path, tiny_net):
    path = tmp_path / "Cosmos-Policy-ALOHA-Predict2-2B.pt"
    torch.save(_reference_state(tiny_net), path)
    state = read_reference_state_dict(path)
    assert set(state) == set(tiny_net.state_dict())
    assert all(v.dtype == torch.bfloat16 for v in state.values())

    fresh = CosmosDiT(ModelConfig.tiny())
    load_reference_checkpoint(fresh, path)
    for k, v in tiny_net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v.to(torch.bfloat16).float()), k

    # A {"model": ...} wrapper is accepted too.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": _reference_state(tiny_net), "optimizer": {}}, wrapped)
    assert set(read_reference_state_dict(wrapped)) == set(state)


def test_missing_key_names_key_and_shape(tmp_path, tiny_net):
    sd = _reference_state(tiny_net)
    del sd["net.blocks.1.cross_attn.k_proj.weight"]
    path = tmp_path / "missing.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_reference_checkpoint(CosmosDiT(ModelConfig.tiny()), path)
    shape = tuple(tiny_net.state_dict()["blocks.1.cross_attn.k_proj.weight"].shape)
    assert "missing key 'blocks.1.cross_attn.k_proj.weight'" in str(e.value)
    assert f"expected shape {shape}" in str(e.value)


def test_misshaped_and_unexpected_keys_name_expected_and_found(tmp_path, tiny_net):
    sd = _reference_state(tiny_net)
    sd["net.final_layer.linear.weight"] = torch.zeros(7, 5, dtype=torch.bfloat16)
    sd["net.blocks.9.extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    expected = tuple(tiny_net.state_dict()["final_layer.linear.weight"].shape)
    with pytest.raises(CheckpointError) as e:
        load_reference_checkpoint(CosmosDiT(ModelConfig.tiny()), path)
    msg = str(e.value)
    assert f"key 'final_layer.linear.weight': expected shape {expected}, found (7, 5)" in msg
    assert "unexpected key 'blocks.9.extra.weight' (found shape (2,))" in msg


def test_truncated_or_foreign_pt_gives_checkpoint_error(tmp_path, tiny_net):
    good = tmp_path / "good.pt"
    torch.save(_reference_state(tiny_net), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_reference_state_dict(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_reference_state_dict(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="no 'net.' keys"):
        read_reference_state_dict(other)


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    import argparse

    path = tmp_path / "objects.pt"
    torch.save({"net.a": torch.zeros(1), "net.b": argparse.Namespace(x=1)}, path)  # an arbitrary object
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_reference_state_dict(path)
    with pytest.raises(CheckpointError, match="'net.b' holds a Namespace, expected a tensor"):
        read_reference_state_dict(path, trust_pickle=True)


def _stats_json(action_dim=14, proprio_dim=14) -> dict:
    g = np.random.default_rng(0)
    out = {}
    for group, d in (("actions", action_dim), ("proprio", proprio_dim)):
        lo = g.uniform(-2, 0, d)
        out.update({f"{group}_min": lo.tolist(), f"{group}_max": (lo + g.uniform(0.1, 2, d)).tolist(),
                    f"{group}_mean": lo.tolist(), f"{group}_std": np.ones(d).tolist(), f"{group}_median": lo.tolist()})
    return out


def test_dataset_stats_read_and_dimension_errors(tmp_path):
    path = tmp_path / "aloha_dataset_statistics.json"
    path.write_text(json.dumps(_stats_json()))
    stats = read_dataset_stats(path, LatentLayout.aloha())
    assert stats.action_dim == 14 and stats.proprio_dim == 14
    a = np.asarray(_stats_json()["actions_max"])
    assert np.allclose(stats.normalize_actions(a), 1.0)
    assert np.allclose(stats.unnormalize_actions(stats.normalize_actions(a * 0.5)), a * 0.5)

    seven = tmp_path / "stats.json"
    seven.write_text(json.dumps(_stats_json(action_dim=7)))
    with pytest.raises(CheckpointError, match="stats.json has 7 action dims, the ALOHA layout needs 14"):
        read_dataset_stats(seven, LatentLayout.aloha())
    broken = tmp_path / "broken.json"
    broken.write_text("{\"actions_min\": [1, 2")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_dataset_stats(broken)
    no_max = {k: v for k, v in _stats_json().items() if k != "proprio_max"}
    (tmp_path / "nomax.json").write_text(json.dumps(no_max))
    with pytest.raises(CheckpointError, match="lacks 'proprio_max'"):
        read_dataset_stats(tmp_path / "nomax.json")
    # Our writer produces the reference's keys.
    out = write_dataset_stats(tmp_path / "out" / "stats.json", stats)
    written, source = json.loads(out.read_text()), _stats_json()
    assert set(written) == set(source)
    assert all(np.array_equal(written[k], source[k]) for k in source)


def test_t5_pickle_read_and_refuses_code(tmp_path):
    table = {"fold shirt": torch.randn(1, 512, 1024).to(torch.bfloat16),
             "put candy in bag": torch.randn(1, 512, 1024).to(torch.bfloat16)}
    path = tmp_path / "aloha_t5_embeddings.pkl"
    with open(path, "wb") as f:
        pickle.dump(table, f)
    got = read_t5_embeddings(path)
    assert set(got) == set(table)
    for k in table:
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], table[k])

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"task": os.getcwd}))  # a global function, not a tensor
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_t5_embeddings(evil)
    (tmp_path / "cut.pkl").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable T5 embedding pickle"):
        read_t5_embeddings(tmp_path / "cut.pkl")


def test_checkpoint_directory_round_trips_bit_exactly(tmp_path, tiny_net):
    from cosmos_policy_core.nn.wan_vae import VAEConfig, WanVAE

    vae_config = VAEConfig.tiny()
    vae = WanVAE(vae_config)
    stats = DatasetStats.from_json_dict(_stats_json())
    text = {"fold shirt": torch.randn(1, 512, 32).to(torch.bfloat16)}
    model_state = {k: v.to(torch.bfloat16) for k, v in tiny_net.state_dict().items()}
    ckpt = CosmosCheckpoint(
        model_config=ModelConfig.tiny(), layout=LatentLayout.aloha(), model_state=model_state, stats=stats,
        text_embeddings=text, vae_config=vae_config, vae_state=vae.state_dict(),
        diffusion=DiffusionConfig(reference_two_step_quirk=False), metadata={"step": 50000},
    )
    path = tmp_path / "ckpt"
    save_checkpoint_dir(path, ckpt)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "model.safetensors", "stats.json", "text_embeddings.safetensors", "vae.safetensors"]
    back = load_checkpoint_dir(path)
    assert back.model_config == ckpt.model_config and back.layout == ckpt.layout
    assert back.vae_config == vae_config and back.diffusion == ckpt.diffusion and back.metadata == {"step": 50000}
    for a, b in ((back.model_state, model_state), (back.vae_state, vae.state_dict()), (back.text_embeddings, text)):
        assert set(a) == set(b)
        for k in b:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for f in ("actions_min", "actions_max", "proprio_min", "proprio_max", "actions_median"):
        assert np.array_equal(getattr(back.stats, f), getattr(stats, f))
    net = back.build_dit(dtype=torch.bfloat16)
    assert torch.equal(net.state_dict()["final_layer.linear.weight"], model_state["final_layer.linear.weight"])

    # Overwriting replaces atomically and leaves no temporary directories behind.
    save_checkpoint_dir(path, CosmosCheckpoint(ModelConfig.tiny(), LatentLayout.aloha(), model_state))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    again = load_checkpoint_dir(path)
    assert again.stats is None and again.vae_state is None and again.text_embeddings == {}


def test_checkpoint_directory_errors(tmp_path, tiny_net):
    path = tmp_path / "ckpt"
    save_checkpoint_dir(path, CosmosCheckpoint(ModelConfig.tiny(), LatentLayout.aloha(), tiny_net.state_dict()))
    model = path / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint_dir(path)
    (path / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a cosmos_aloha.checkpoint config"):
        load_checkpoint_dir(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_dir(tmp_path / "missing")
    # Stats with the wrong dimension cannot be saved with the ALOHA layout.
    bad = CosmosCheckpoint(ModelConfig.tiny(), LatentLayout.aloha(), tiny_net.state_dict(),
                           stats=DatasetStats.from_json_dict(_stats_json(action_dim=7)))
    with pytest.raises(CheckpointError, match="7 action dims"):
        save_checkpoint_dir(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_text_embeddings_safetensors(tmp_path):
    table = {"put candies in bowl": torch.randn(1, 512, 1024).to(torch.bfloat16)}
    p = write_text_embeddings(tmp_path / "t.safetensors", table)
    got = read_text_embeddings(p)
    assert torch.equal(got["put candies in bowl"], table["put candies in bowl"])
    with pytest.raises(CheckpointError, match="expected \\(1, L, D\\)"):
        write_text_embeddings(tmp_path / "x.safetensors", {"a": torch.zeros(2, 3, 4, 5)})
