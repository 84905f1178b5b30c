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
                          and copies the sidecar files next to it. Seconds.
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


def weights(gguf_path, side, out, dtype="bfloat16", threads=None, check=None):
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
    with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 4)) as ex:
        for r in ex.map(one, tensors):
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
    f = sub.add_parser("full")
    f.add_argument("gguf")
    f.add_argument("out")
    for p in (s, w, f):
        p.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    if a.mode == "sidecar":
        sidecar(a.gguf, a.out, a.dtype)
    elif a.mode == "weights":
        weights(a.gguf, a.sidecar, a.out, a.dtype, a.threads, a.check)
    else:
        full(a.gguf, a.out, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
