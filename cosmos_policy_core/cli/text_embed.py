"""`cosmos-aloha text-embed`: T5 encoder embeddings of task strings in the reference format (needs local T5 weights).

(1, 512, d_model) per task, zero past the true token count, written as text_embeddings.safetensors (or a checkpoint's).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_policy_core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_LENGTH = 512


def compute_t5_embeddings(t5_path: str | Path, tasks: list[str], device: str = "cpu",
                          max_length: int = MAX_LENGTH) -> dict[str, "torch.Tensor"]:
    """task -> bf16 (1, max_length, d_model): T5 encoder last hidden state, zeroed from the true length on."""
    try:
        import torch
        from transformers import T5EncoderModel, T5TokenizerFast
    except ImportError as e:
        raise ConfigError("text-embed needs the `transformers` package (pip install transformers sentencepiece)") from e
    t5_path = Path(t5_path)
    if not t5_path.exists():
        raise CheckpointError(f"T5 weights {t5_path} do not exist; download google-t5/t5-11b (the encoder is "
                              "enough) and pass its directory")
    tokenizer = T5TokenizerFast.from_pretrained(str(t5_path))
    model = T5EncoderModel.from_pretrained(str(t5_path), torch_dtype=torch.float32).to(device).eval()
    out = {}
    with torch.no_grad():
        for task in tasks:
            tok = tokenizer([task], return_tensors="pt", padding="max_length", max_length=max_length,
                            truncation=True)
            ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            true_len = int(mask.sum())  # the reference zeroes from the number of real tokens on
            hidden[:, true_len:] = 0
            out[task] = hidden.to(torch.bfloat16).cpu()
            log.info("embedded %r (%d tokens)", task, true_len)
    return out


def run(args) -> int:
    from cosmos_policy_core.checkpoint import read_text_embeddings, write_text_embeddings

    table = compute_t5_embeddings(args.t5, args.tasks, device=args.device)
    out = Path(args.out)
    if out.exists() and args.append:
        table = {**read_text_embeddings(out), **table}
    write_text_embeddings(out, table)
    print(f"wrote {len(table)} task embeddings to {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("text-embed", help="compute T5 task embeddings (needs local T5 weights)")
    p.add_argument("--t5", required=True, help="directory of a T5 model (google-t5/t5-11b for the released policy)")
    p.add_argument("--tasks", nargs="+", required=True, help="task strings")
    p.add_argument("--out", required=True, help="text_embeddings.safetensors to write")
    p.add_argument("--append", action="store_true", help="keep the tasks already in --out")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)
