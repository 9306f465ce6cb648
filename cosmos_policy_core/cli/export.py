"""`cosmos-aloha export`: the fixed-shape denoiser and VAE encoder of a checkpoint as ONNX (and a TensorRT engine).

The ONNX denoiser is checked against eager PyTorch before the command reports success.
"""
from __future__ import annotations

from cosmos_policy_core.errors import CheckpointError

PARITY_TOLERANCE = 1e-3  # fp32 graph vs eager; the 2B model's long reductions sit well below this


def run(args) -> int:
    from cosmos_policy_core.engines.export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, fmt=args.format, batch=args.batch, steps=args.steps,
                                 opset=args.opset, dynamo=args.dynamo, validate=not args.no_validate,
                                 include_vae=not args.no_vae, precision=args.precision)
    for key, name in manifest["files"].items():
        print(f"{key}: {args.out}/{name}")
    diff = manifest.get("denoiser_max_abs_diff")
    if diff is not None:
        print(f"ONNX vs eager PyTorch: max |diff| = {diff:.3g}")
        if diff > PARITY_TOLERANCE:
            raise CheckpointError(f"exported denoiser differs from PyTorch by {diff:.3g} (> {PARITY_TOLERANCE}); "
                                  "try --dynamo or another --opset")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the denoiser + VAE encoder to ONNX / TensorRT")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--steps", type=int, default=1, help="denoising steps the engine serves (recorded)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch of the denoiser graph (best-of-N: N)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16", help="TensorRT precision")
    p.add_argument("--no-vae", action="store_true", help="export only the denoiser")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime parity check")
    p.set_defaults(func=run)
