"""A tiny random-weight Llama-style model (with a word-level tokenizer) for fast engine tests.

Defaults: vocab 256, 2 layers, hidden 128, 4 heads of 32 (the CPU attention backend needs
head_dim ≥ 32), 2 KV heads, float32, ~0.5 M parameters, 2 MB on disk; vLLM CPU loads it with
``enforce_eager=True`` in seconds.

Weights are scaled so that the model is neither uniform nor one-hot and depends on context:
every linear layer has std ``1/sqrt(fan_in)`` (unit-variance outputs, so attention and MLP
contribute as much as the token embedding), embeddings have std 1, and the LM head has std
``logit_std/sqrt(hidden)`` so next-token logits have std ≈ ``logit_std``. With the defaults
(measured over 2048 random contexts, seeds 0 and 1) the T = 1 next-token distribution has entropy
3.1 nats on average (5–95 %: 1.8–3.9; uniform is 5.5), top-1 probability 0.29 (0.10–0.65), ~9
tokens above 2 %, and contexts ending in the same token still differ (total variation ~0.7).
``logit_std`` 2.0 → entropy 3.8 / top-1 0.19; 3.0 → 2.5 / 0.38.

Tokenizer: token ``i`` is the word ``t<i>`` (``"t5 t17"`` ↔ ``[5, 17]``); id 0 is ``<eos>``
(also pad), id 1 is ``<unk>``. The model emits ``<eos>`` at T = 1 with probability ~0.004 per step, so pass ``ignore_eos=True`` where fixed lengths matter. ``skip_tokenizer_init=True`` with
token-id prompts also works.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS_ID = 0
UNK_ID = 1
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
"""Concatenates message contents, so chat-templated prompts are plain token words."""


def build_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``<eos>``, ``<unk>``, ``t2`` … ``t<vocab_size-1>`` (whitespace split)."""
    vocab = {"<eos>": EOS_ID, "<unk>": UNK_ID} | {f"t{i}": i for i in range(2, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<eos>",
        pad_token="<eos>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    path: Path,
    vocab_size: int = 256,
    num_layers: int = 2,
    hidden: int = 128,
    seed: int = 0,
    logit_std: float = 2.5,
    max_positions: int = 4096,
) -> Path:
    """Save a random tiny Llama (weights, config, tokenizer) to ``path`` and return ``path``.

    Deterministic in ``seed`` (the global RNG is left untouched). ``hidden`` must be a multiple
    of 32; heads are 32 wide. Overwrites files already in ``path``.
    """
    if hidden % 32 or vocab_size < 3:
        raise ValueError(f"need hidden % 32 == 0 and vocab_size >= 3, got {hidden=}, {vocab_size=}")
    num_heads = hidden // 32
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        head_dim=32,
        max_position_embeddings=max_positions,
        initializer_range=1 / math.sqrt(hidden),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("proj.weight"):
                    param.normal_(0.0, 1 / math.sqrt(param.shape[1]))
            model.model.embed_tokens.weight.normal_(0.0, 1.0)
            model.lm_head.weight.normal_(0.0, logit_std / math.sqrt(hidden))
    model.save_pretrained(path)
    build_tiny_tokenizer(vocab_size).save_pretrained(path)
    return Path(path)
