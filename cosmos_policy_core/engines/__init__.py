"""Inference backends behind one `Denoiser` interface: torch (eager / compile), ONNX Runtime, TensorRT.

Heavy backends import lazily, so `import cosmos_policy_core.engines` never needs onnxruntime or TensorRT.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Denoiser": "cosmos_policy_core.engines.base",
    "DenoiserModule": "cosmos_policy_core.engines.base",
    "TorchDenoiser": "cosmos_policy_core.engines.torch_engine",
    "OnnxDenoiser": "cosmos_policy_core.engines.onnx_engine",
    "OnnxVAEEncoder": "cosmos_policy_core.engines.onnx_engine",
    "TensorRTDenoiser": "cosmos_policy_core.engines.tensorrt_engine",
    "export_checkpoint": "cosmos_policy_core.engines.export",
    "load_exported": "cosmos_policy_core.engines.export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
