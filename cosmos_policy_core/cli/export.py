"""`cosmos-aloha export`: the fixed-shape denoiser and conditioning VAE encoder of a checkpoint as ONNX (and TensorRT engines).

Each graph is checked against eager PyTorch at its precision before the command reports success.
"""
from __future__ import annotations

from cosmos_policy_core.errors import CheckpointError, ConfigError


def run(args) -> int:
    from cosmos_policy_core.engines.export import build_tensorrt_engines, export_checkpoint, parity_failures

    if not args.engines_only and not args.checkpoint:
        raise ConfigError("--checkpoint is required (only --engines-only works on an existing export directory)")
    if args.engines_only:
        manifest = build_tensorrt_engines(args.out)
    else:
        manifest = export_checkpoint(args.checkpoint, args.out, fmt=args.format, batch=args.batch, steps=args.steps,
                                     opset=args.opset, dynamo=True if args.dynamo else None,
                                     validate=not args.no_validate, include_vae=not args.no_vae,
                                     precision=args.precision)
    print(f"precision {manifest['precision']}, batch {manifest['batch']}, from {manifest['checkpoint']['path']}")
    for name, graph in manifest["graphs"].items():
        files = ", ".join(f"{args.out}/{graph[k]}" for k in ("onnx", "tensorrt") if graph.get(k))
        print(f"{name}: {files}")
    for name, p in manifest.get("parity", {}).items():
        print(f"{name} vs eager PyTorch: max |diff| {p['same_precision']:.3g} of the output's range"
              + (f" ({p['vs_fp32']:.3g} against float32)" if "vs_fp32" in p else ""))
    failures = parity_failures(manifest)
    if failures:
        raise CheckpointError("; ".join(failures) + ": the exported graph does not compute what the model does; "
                              "try --dynamo or another --opset")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the denoiser + VAE encoder to ONNX / TensorRT")
    p.add_argument("--checkpoint", help="checkpoint directory (not needed with --engines-only)")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx",
                   help="tensorrt: also build the TensorRT engines (on the GPU machine that will run them)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="precision of both graphs, and so of the TensorRT engines built from them "
                        "(default: fp32 for onnx, bf16 for tensorrt)")
    p.add_argument("--steps", type=int, default=1, help="denoising steps the engine serves (recorded)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch of the denoiser graph (best-of-N: N)")
    p.add_argument("--out", required=True,
                   help="output directory; <checkpoint>/export is where the policy looks by default")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--dynamo", action="store_true",
                   help="use the torch.export-based ONNX exporter for fp32 too (fp16 / bf16 always use it)")
    p.add_argument("--no-vae", action="store_true", help="export only the denoiser (the policy then encodes eagerly)")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime parity check")
    p.add_argument("--engines-only", action="store_true",
                   help="build TensorRT engines for the ONNX graphs already in --out (e.g. exported elsewhere)")
    p.set_defaults(func=run)
