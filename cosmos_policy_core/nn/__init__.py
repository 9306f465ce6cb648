"""Networks with the reference's parameter names: the Cosmos-Predict2 DiT and the Wan2.1 VAE."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "cosmos_policy_core.nn.config",
    "CosmosDiT": "cosmos_policy_core.nn.dit",
    "WanVAE": "cosmos_policy_core.nn.wan_vae",
    "VAEConfig": "cosmos_policy_core.nn.wan_vae",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
