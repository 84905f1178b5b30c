"""GGUF file → plain HF folder (safetensors + tokenizer + chat template), via transformers.

Needs ``transformers``, ``gguf`` (tensor reader) and ``accelerate`` (transformers refuses GGUF
loading without it). Weights are dequantized on load, so the folder holds ordinary dense tensors
(the 4-bit rounding of the GGUF stays baked in) and no ``quantization_config``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Set bos/eos/pad tokens from the ids the GGUF declares (carried into the model config).

    transformers 5.15's GGUF tokenizer converter swaps/duplicates bos and eos for GPT-2-style BPE
    vocabularies (SmolLM2 came out with ``eos_token = "<|im_start|>"``), while the config ids come
    straight from the GGUF metadata (``tokenizer.ggml.{bos,eos,padding}_token_id``). It also sets
    ``clean_up_tokenization_spaces=True``, which transformers ignores for BPE with a warning on
    every load; the original SmolLM2/Qwen2.5 tokenizers have it off.
    """
    tokenizer.clean_up_tokenization_spaces = False
    for role in ("bos", "eos", "pad"):
        token_id = getattr(model.config, f"{role}_token_id", None)
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


def convert_gguf(gguf: Path, out_dir: Path, dtype: str) -> Path:
    """Write the model in ``gguf`` to ``out_dir`` (created) as an HF folder of ``dtype`` weights.

    Measured on 2 CPU cores (bfloat16): SmolLM2-135M ~21–31 s; Qwen2.5-Coder-0.5B ~64 s with a
    3.2 GB RSS peak.
    """
    gguf_dir, gguf_name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=getattr(torch, dtype))
    _fix_tokenizer(tokenizer, model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
