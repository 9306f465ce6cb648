"""Inference backends behind one `Denoiser` interface (and the fast-path VAE encoder): torch, compile, ONNX Runtime, TensorRT.

Heavy backends import lazily, so `import cosmos_policy_core.engines` never needs onnxruntime or TensorRT.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Denoiser": "cosmos_policy_core.engines.base",
    "DenoiserModule": "cosmos_policy_core.engines.base",
    "ENGINES": "cosmos_policy_core.engines.resolve",
    "EngineSpec": "cosmos_policy_core.engines.resolve",
    "resolve_engine": "cosmos_policy_core.engines.resolve",
    "load_engines": "cosmos_policy_core.engines.resolve",
    "ClipEncoder": "cosmos_policy_core.engines.encoder",
    "ConditioningEncoderModule": "cosmos_policy_core.engines.encoder",
    "TorchClipEncoder": "cosmos_policy_core.engines.encoder",
    "TorchDenoiser": "cosmos_policy_core.engines.torch_engine",
    "OnnxDenoiser": "cosmos_policy_core.engines.onnx_engine",
    "OnnxClipEncoder": "cosmos_policy_core.engines.onnx_engine",
    "TensorRTDenoiser": "cosmos_policy_core.engines.tensorrt_engine",
    "TensorRTClipEncoder": "cosmos_policy_core.engines.tensorrt_engine",
    "export_checkpoint": "cosmos_policy_core.engines.export",
    "load_exported": "cosmos_policy_core.engines.export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
