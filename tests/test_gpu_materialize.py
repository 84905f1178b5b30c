"""benchmarks/gpu/materialize.py's torch dequantization (used by the GPU bring-up): the same
float32 values, bit for bit, as the `gguf` package's numpy code, for every type it handles.
Random blocks (with finite float16 scales) here; the real Qwen2.5 files are only on the GPU
machine's payload (the bring-up logs how many tensors each path took)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
import torch  # noqa: E402
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
from materialize import TORCH_TYPES, torch_dequantize  # noqa: E402

F16_FIELDS = {"Q4_K": (0, 2), "Q6_K": (208,)}
"""Byte offsets of each block's float16 scales (random bytes could make them NaN or inf)."""


def _raw(qt: GGMLQuantizationType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qt]
    if qt.name == "F32":
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if qt.name == "F16":
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for off in F16_FIELDS[qt.name]:
        raw[:, off:off + 2] = (rng.standard_normal(len(raw)) * 0.05).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // block * size)


@pytest.mark.parametrize("name", TORCH_TYPES)
def test_torch_dequantize_is_bit_identical_to_gguf(name: str) -> None:
    qt = GGMLQuantizationType[name]
    rng = np.random.default_rng(7)
    rows, cols = 6, 512  # two 256-value blocks per row
    raw = _raw(qt, rows, cols, rng)
    ref = dequantize(raw, qt)
    got = torch_dequantize(raw, qt, [rows, cols], "cpu")
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape == (rows, cols)
    assert np.isfinite(ref).all()
    assert np.array_equal(got.numpy().view(np.uint32), ref.astype(np.float32).view(np.uint32))
    assert torch.equal(got.to(torch.bfloat16), torch.from_numpy(ref.astype(np.float32)).to(torch.bfloat16))


def test_other_types_fall_back() -> None:
    raw = np.zeros((1, GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][1]), np.uint8)
    assert torch_dequantize(raw, GGMLQuantizationType.Q8_0, [1, 32], "cpu") is None


def test_weights_with_torch_writes_the_same_checkpoint(tmp_path: Path) -> None:
    """``weights`` with a torch device (CPU here, CUDA on the GPU machine) writes the same
    safetensors as with gguf's numpy code: SmolLM2's Q4_1 tensors fall back to numpy, its F32
    norms go through torch, and the names are mapped alike."""
    from safetensors.torch import load_file

    from materialize import sidecar, weights

    from openrlhf_das.models.registry import MODELS, locate_parts  # noqa: PLC0415

    parts = locate_parts(MODELS["smollm2-135m-instruct"])
    assert len(parts) == 1  # one GGUF file in the package
    gguf = str(parts[0])
    side = str(tmp_path / "side")
    sidecar(gguf, side, "bfloat16")
    weights(gguf, side, str(tmp_path / "numpy"), device=None)
    weights(gguf, side, str(tmp_path / "torch"), device="cpu")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("numpy", "torch"))
    assert set(a) == set(b) and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "torch" / "config.json").is_file()
