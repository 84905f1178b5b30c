"""Turn a GGUF model into a plain bf16 Hugging Face folder (safetensors) for vLLM.

Three modes:

  sidecar GGUF OUT        (CPU machine, by prepare.sh) tokenizer + chat template +
                          config.json + generation_config.json, no weights. This is
                          the slow part of transformers' GGUF loading (it parses the
                          GGUF metadata three times and rebuilds the BPE tokenizer in
                          Python: ~20-40 s for Qwen2.5), so it is done off the GPU
                          machine and shipped (a few MB).
  weights GGUF SIDECAR OUT (GPU machine, by install.sh) dequantizes the tensors with
                          the `gguf` package in a thread pool, maps GGUF tensor names
                          to HF names with transformers' own mapping
                          (get_gguf_hf_weights_map + its TENSOR_PROCESSORS, e.g. the
                          llama q/k un-permutation), writes model.safetensors (bf16)
                          and copies the sidecar files next to it. F32/F16/Q4_K/Q6_K
                          tensors are dequantized with torch on the GPU when there is
                          one (torch_dequantize, bit-identical), others with `gguf`.
  full GGUF OUT           plain transformers path (load with gguf_file=, drop
                          quantization_config, copy the state dict into a fresh model,
                          save with tokenizer + chat template). Slow; reference and
                          fallback. `weights` output is checked against it (--check).

The weights are the 4-bit-rounded approximations stored in the GGUF.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import time

SIDECAR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def _log(msg):
    print(f"[materialize] {msg}", flush=True)


def _clean_config(path, dtype):
    with open(path) as fh:
        c = json.load(fh)
    c.pop("quantization_config", None)
    c["dtype"] = dtype
    with open(path, "w") as fh:
        json.dump(c, fh, indent=2)


# ---------------------------------------------------------------- sidecar (CPU)
def sidecar(gguf_path, out, dtype="bfloat16"):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    t0 = time.time()
    d, f = os.path.split(os.path.abspath(gguf_path))
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.save_pretrained(tmp)
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    if not getattr(cfg, "architectures", None):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cfg.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.model_type]]
    cfg.save_pretrained(tmp)
    GenerationConfig.from_model_config(cfg).save_pretrained(tmp)
    _clean_config(os.path.join(tmp, "config.json"), dtype)
    with open(os.path.join(tmp, "gguf_source.json"), "w") as fh:
        json.dump({"gguf": f}, fh)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _log(
        f"sidecar {f} -> {out}: {cfg.architectures}, "
        f"chat_template={'yes' if tok.chat_template else 'NO'}, {time.time() - t0:.1f}s"
    )


# ---------------------------------------------------------------- GGUF parsing
# Minimal GGUF (v2/v3) reader: skips the key/value section quickly (gguf's own
# GGUFReader builds a Python object per token string: ~13 s for a 151k vocab).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_tensors(path):
    import numpy as np

    with open(path, "rb") as fh:
        buf = fh.read(64 << 20)  # metadata is well below this for our models
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def take_str():
        nonlocal pos
        n = take("Q")
        s = buf[pos : pos + n]
        pos += n
        return s.decode("utf-8", "replace")

    def skip_value(vtype):
        nonlocal pos
        if vtype == 8:
            n = take("Q")
            pos += n
        elif vtype == 9:
            itype, n = take("I"), take("Q")
            if itype in _SCALAR:
                pos += struct.calcsize("<" + _SCALAR[itype]) * n
            else:
                for _ in range(n):
                    skip_value(itype)
        else:
            pos += struct.calcsize("<" + _SCALAR[vtype])

    magic = buf[:4]
    pos = 4
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    version = take("I")
    if version < 2:
        raise ValueError(f"{path}: GGUF v{version} not supported")
    n_tensors, n_kv = take("Q"), take("Q")
    alignment, arch = 32, None
    for _ in range(n_kv):
        key = take_str()
        vtype = take("I")
        if key == "general.alignment":
            alignment = take("I")
        elif key == "general.architecture":
            arch = take_str()
        else:
            skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = take_str()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        ttype, off = take("I"), take("Q")
        infos.append((name, dims, ttype, off))
    data_start = (pos + alignment - 1) // alignment * alignment

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    mm = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = []
    for name, dims, ttype, off in infos:
        qt = GGMLQuantizationType(ttype)
        block, tsize = GGML_QUANT_SIZES[qt]
        shape = list(reversed(dims))  # numpy order
        n_el = 1
        for x in dims:
            n_el *= x
        nbytes = n_el // block * tsize
        raw = mm[data_start + off : data_start + off + nbytes]
        shape_bytes = shape[:-1] + [shape[-1] // block * tsize]
        tensors.append((name, qt, raw.reshape(shape_bytes), shape))
    return arch, tensors


TORCH_TYPES = ("F32", "F16", "Q4_K", "Q6_K")
"""GGML types :func:`torch_dequantize` handles (the Qwen2.5 Q4_K_M files hold only these); any
other falls back to the `gguf` package's numpy code."""


def torch_dequantize(raw, qtype, shape, device):
    """``raw`` (a GGUF tensor's bytes, uint8, as :func:`read_gguf_tensors` gives it) dequantized
    to a float32 tensor of ``shape`` on ``device``, or None for a type not in :data:`TORCH_TYPES`.

    The same arithmetic as `gguf`'s numpy ``dequantize_blocks`` (gguf-py 0.x: Q4_K
    ``d * q - dmin * m`` per 32-value sub-block, Q6_K ``d * scale * (q - 32)`` per 16), one
    elementwise operation per numpy one and in the same order, so the floats are the same bit for
    bit (``tests/test_gpu_materialize.py``; all 339 tensors of the Qwen2.5-Coder-1.5B Q4_K_M file
    on this CPU). Meant for a GPU, where the numpy code took 97 s for that model on the GPU
    machine's 16 threads: on a CPU, torch's byte operations are slower than numpy's (53 s
    against 32 s on 2 busy cores), so :func:`weights` uses it only with a CUDA device."""
    import numpy as np
    import torch

    name = qtype.name
    if name not in TORCH_TYPES:
        return None
    data = torch.from_numpy(np.array(raw, dtype=np.uint8).reshape(-1)).to(device)  # a copy: raw is a read-only memmap
    if name == "F32":
        return data.view(torch.float32).reshape(shape)
    if name == "F16":
        return data.view(torch.float16).to(torch.float32).reshape(shape)
    u8 = lambda *v: torch.tensor(v, dtype=torch.uint8, device=device)  # noqa: E731
    if name == "Q4_K":  # 144-byte blocks of 256: d (f16), dmin (f16), 12 bytes of 6-bit scales/mins, 128 of nibbles
        b = data.reshape(-1, 144)
        n = b.shape[0]
        d = b[:, 0:2].contiguous().view(torch.float16).to(torch.float32)
        dmin = b[:, 2:4].contiguous().view(torch.float16).to(torch.float32)
        sc3 = b[:, 4:16].reshape(n, 3, 4)
        sd, sm, smd = sc3[:, 0:1], sc3[:, 1:2], sc3[:, 2:3]
        sc = torch.cat([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], dim=-1).reshape(n, 8)
        mn = torch.cat([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], dim=-1).reshape(n, 8)
        d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
        dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
        qs = b[:, 16:144].reshape(n, -1, 1, 32) >> u8(0, 4).reshape(1, 1, 2, 1)
        qs = (qs & 0x0F).reshape(n, -1, 32).to(torch.float32)
        return (d * qs - dm).reshape(shape)
    # Q6_K: 210-byte blocks of 256: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d (f16)
    b = data.reshape(-1, 210)
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = b[:, 208:210].contiguous().view(torch.float16).to(torch.float32)
    d = (d * scales).reshape(n, 16, 1)
    ql = b[:, 0:128].reshape(n, -1, 1, 64) >> u8(0, 4).reshape(1, 1, 2, 1)
    ql = (ql & 0x0F).reshape(n, -1, 32)
    qh = b[:, 128:192].reshape(n, -1, 1, 32) >> u8(0, 2, 4, 6).reshape(1, 1, 4, 1)
    qh = (qh & 0x03).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    q = q.reshape(n, 16, -1).to(torch.float32)
    return (d * q).reshape(shape)


def weights(gguf_path, side, out, dtype="bfloat16", threads=None, check=None, device=None):
    import numpy as np
    import torch
    from concurrent.futures import ThreadPoolExecutor
    from gguf import dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    t0 = time.time()
    if os.path.exists(os.path.join(out, "model.safetensors")) and check is None:
        _log(f"{out} exists, skipping")
        return
    tdtype = getattr(torch, dtype)
    arch, tensors = read_gguf_tensors(gguf_path)
    t_parse = time.time() - t0
    with open(os.path.join(side, "config.json")) as fh:
        cfg_dict = json.load(fh)
    cfg = AutoConfig.from_pretrained(side)
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(cfg)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg_dict)
    name_map = get_gguf_hf_weights_map(meta_model, processor)
    expected = set(meta_model.state_dict().keys())

    def one(item):
        name, qt, raw, shape = item
        w = dequantize(raw, qt)  # float32 (handles F32/F16/BF16 and the quant types)
        assert list(w.shape) == list(shape), (name, w.shape, shape)
        res = processor.process(weights=w, name=name, tensor_key_mapping=name_map, parsed_parameters={})
        if res.name not in name_map:
            return None
        return name_map[res.name], torch.from_numpy(np.array(res.weights, dtype=np.float32, copy=True)).to(tdtype)

    sd = {}
    rest = tensors
    dev = device or ("cuda" if torch.cuda.is_available() else None)  # torch on a CPU is slower than numpy
    if dev is not None and type(processor) is TensorProcessor:  # its process() keeps weights and name
        rest = []
        for item in tensors:
            name, qt, raw, shape = item
            w = torch_dequantize(raw, qt, shape, dev)
            if w is None:
                rest.append(item)
            elif name in name_map:
                sd[name_map[name]] = w.to(tdtype).cpu()
        _log(f"{len(tensors) - len(rest)} tensors dequantized with torch on {dev}, {len(rest)} with gguf's numpy code")
    with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 4)) as ex:
        for r in ex.map(one, rest):
            if r is not None:
                sd[r[0]] = r[1]
    t_deq = time.time() - t0 - t_parse
    if getattr(cfg, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = expected - set(sd)
    extra = set(sd) - expected
    # rotary buffers etc. are not parameters in the checkpoint
    missing = {k for k in missing if "rotary_emb" not in k}
    if missing or extra:
        raise RuntimeError(f"name mapping mismatch: missing={sorted(missing)[:8]} extra={sorted(extra)[:8]}")
    # shape check against the HF model
    meta_sd = meta_model.state_dict()
    for k, v in sd.items():
        if tuple(meta_sd[k].shape) != tuple(v.shape):
            raise RuntimeError(f"shape mismatch {k}: gguf {tuple(v.shape)} vs hf {tuple(meta_sd[k].shape)}")

    if check is not None:
        from safetensors.torch import load_file

        ref = load_file(os.path.join(check, "model.safetensors"))
        ref.pop("lm_head.weight", None) if getattr(cfg, "tie_word_embeddings", False) else None
        bad = [k for k in ref if k not in sd or not torch.equal(ref[k], sd[k])]
        _log(f"check vs {check}: {len(ref)} reference tensors, {len(bad)} differ {bad[:5]}")
        if bad or set(ref) != set(sd):
            raise SystemExit(1)
        return

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    for f in SIDECAR_FILES:
        p = os.path.join(side, f)
        if os.path.exists(p):
            shutil.copy(p, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    n = sum(v.numel() for v in sd.values())
    _log(
        f"weights {os.path.basename(gguf_path)} -> {out}: {n / 1e6:.1f}M params ({arch}), "
        f"parse {t_parse:.1f}s, dequant {t_deq:.1f}s, total {time.time() - t0:.1f}s"
    )


# ---------------------------------------------------------------- full (reference)
def full(gguf_path, out, dtype="bfloat16"):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    d, f = os.path.split(os.path.abspath(gguf_path))
    tdtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=tdtype)
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=tdtype)
    sd = {k: v.to(tdtype).contiguous() for k, v in src.state_dict().items()}
    model.load_state_dict(sd, assign=True, strict=True)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = src.generation_config
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _clean_config(os.path.join(tmp, "config.json"), dtype)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _log(f"full {f} -> {out}: {time.time() - t0:.1f}s")


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sidecar")
    s.add_argument("gguf")
    s.add_argument("out")
    w = sub.add_parser("weights")
    w.add_argument("gguf")
    w.add_argument("sidecar")
    w.add_argument("out")
    w.add_argument("--threads", type=int, default=None)
    w.add_argument("--check", default=None, help="compare with a `full` output folder instead of saving")
    w.add_argument("--device", default=None, help="torch device of the dequantization (default: cuda if present, else gguf's numpy code)")
    f = sub.add_parser("full")
    f.add_argument("gguf")
    f.add_argument("out")
    for p in (s, w, f):
        p.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    if a.mode == "sidecar":
        sidecar(a.gguf, a.out, a.dtype)
    elif a.mode == "weights":
        weights(a.gguf, a.sidecar, a.out, a.dtype, a.threads, a.check, a.device)
    else:
        full(a.gguf, a.out, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
