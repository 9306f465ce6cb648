"""How strongly does the task object move the VAE latent the DiT sees? Per camera and image size.

Renders `--scenes` reset scenes of a sim task (only the object pose differs between them), encodes each
as the policy does (the camera frame resized with `images.client_resize`, the layout's 41-frame clip, one
causal VAE pass) and reports, per camera slot and image size:

- `content_rms`: the RMS of the camera's latent frame (what every token carries anyway);
- `object_dev_max`: over latent positions, the largest channel-RMS standard deviation across scenes,
  i.e. how far the object moves the latent where it moves it most;
- `contrast`: their ratio;
- `object_recall`: how much of the object the VAE gives back after a decode of that clip: over the pixels where
  a scene differs from the scenes' mean image (the object, mostly), 1 - |reconstruction - image| / |image - mean|,
  averaged over the camera's 4 decoded frames (1: the object comes back; 0: the mean image does; < 0: worse);
- `psnr_db`: the PSNR of those 4 decoded frames against the camera image (the whole frame).

In benchmarks/first_reach_probe.py a small DiT trained from scratch started to use the cube sooner the
larger this contrast was, with the token grid fixed (docs/training.md, "Why the first reach is blind").
Example:

    MUJOCO_GL=egl .venv/bin/python benchmarks/latent_contrast.py \
        --vae models/aloha_sim_transfer_cube_small --sizes 64 128 224 --json latent_contrast.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.runtime.images import client_resize
from cosmos_policy_core.layout import LatentLayout, build_pixel_clip, clip_to_vae_input
from cosmos_policy_core.sim.env import render_reset_scenes
from cosmos_policy_core.train.vae import load_vae, object_recall


@torch.no_grad()
def encode_scenes(vae, layout: LatentLayout, frames: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scenes, 3, T, S, S) pixel clips in [-1, 1] and (scenes, C, T', h, w) latents, built and encoded (one
    scene at a time) as the policy builds and encodes an observation."""
    clips, latents = [], []
    for scene in frames:
        resized = {src: torch.from_numpy(np.array(client_resize(scene[src], layout.image_size)))
                   for src in layout.camera_sources}
        clip = clip_to_vae_input(build_pixel_clip(layout, resized))
        clips.append(clip)
        latents.append(vae.encode(clip))
    return torch.cat(clips), torch.cat(latents)


def camera_latents(layout: LatentLayout, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """camera slot -> (scenes, C, h, w) latent frame of that slot."""
    return {cam: latents[:, :, layout.index(cam)] for cam in layout.cameras}


@torch.no_grad()
def reconstruction(vae, layout: LatentLayout, clips: torch.Tensor, latents: torch.Tensor,
                   threshold: float = 0.1) -> dict[str, dict[str, float | None]]:
    """camera slot -> {"object_recall", "psnr_db"} of the camera's 4 frames of the decoded policy clips
    (`encode_scenes`' output, decoded one scene at a time).

    object_recall: 1 - |recon - x| / |x - mean| over the pixels whose |x - mean| (mean over RGB, [-1, 1] units)
    exceeds `threshold`, pooled over scenes; None where no pixel differs between scenes (the camera does not
    see the object)."""
    recon = torch.cat([vae.decode(latents[i:i + 1]) for i in range(len(latents))])   # N, 3, T, S, S
    out = {}
    for cam in layout.cameras:
        start = layout.pixel_frame(layout.index(cam))
        x = clips[:, :, start:start + 1]                                            # N, 3, 1, S, S
        r = recon[:, :, start:start + layout.duplicates_per_image]                  # N, 3, 4, S, S
        recall = object_recall(r, x, x.mean(0, keepdim=True), threshold)
        recall = None if recall is None else round(recall, 4)
        mse = float(((r - x) ** 2).mean()) / 4.0                                    # [-1, 1] -> [0, 1] scale
        out[cam] = {"object_recall": recall, "psnr_db": round(10 * np.log10(1.0 / max(mse, 1e-12)), 2)}
    return out


def contrast(z_N_C_H_W: torch.Tensor) -> dict[str, float]:
    content = float(z_N_C_H_W.pow(2).mean().sqrt())
    dev = float(z_N_C_H_W.std(0).pow(2).mean(0).sqrt().max())
    return {"content_rms": round(content, 4), "object_dev_max": round(dev, 4), "contrast": round(dev / content, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", required=True, help="a checkpoint or VAE directory (vae.safetensors + config)")
    parser.add_argument("--task", default="transfer_cube", choices=("transfer_cube", "insertion"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224], help="layout image sizes")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=3000)
    parser.add_argument("--render-size", type=int, default=224, help="camera frames are rendered square at this size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.scenes < 2:
        parser.error("--scenes must be at least 2 (the deviation is taken across scenes)")
    torch.set_num_threads(args.threads)

    vae = load_vae(args.vae).eval()
    frames = render_reset_scenes(args.task, args.scenes, args.seed, args.render_size)
    rows = []
    for size in args.sizes:
        layout = dataclasses.replace(LatentLayout.aloha(), image_size=size)
        clips, latents = encode_scenes(vae, layout, frames)
        recon = reconstruction(vae, layout, clips, latents)
        for cam, z in camera_latents(layout, latents).items():
            rows.append({"image_size": size, "latent_hw": layout.latent_hw, "camera": cam, **contrast(z),
                         **recon[cam]})

    print(f"{args.task}, {args.scenes} reset scenes, VAE {args.vae} ({platform.processor() or platform.machine()})")
    print(f"{'size':>5} {'latent':>7} {'camera':>12} {'content_rms':>12} {'object_dev_max':>15} {'contrast':>9} "
          f"{'object_recall':>14} {'psnr_db':>8}")
    for r in rows:
        print(f"{r['image_size']:>5} {r['latent_hw']:>5}² {r['camera']:>12} {r['content_rms']:>12.3f} "
              f"{r['object_dev_max']:>15.3f} {r['contrast']:>9.3f} "
              f"{'-' if r['object_recall'] is None else format(r['object_recall'], '.3f'):>14} {r['psnr_db']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "scenes": args.scenes, "seed": args.seed,
                                         "vae": str(args.vae), "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
