"""The suffix-tree backend: ArcticInference's C++ ``SuffixTree`` behind a tiny typed API.

We do not implement our own tree: ``arctic_inference.suffix_decoding._C.SuffixTree`` is a
depth-bounded, path-compressed suffix tree whose node counts are empirical next-token
frequencies. Measured here (``benchmarks/drafter_speed.py``): a ``speculate`` call is a few µs.

Token arrays crossing into the tree are contiguous 1-D ``int32`` numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

INSTALL_HINT = (
    "arctic-inference is required for the DAS suffix trees. It is source-only on PyPI; install it "
    "against your torch with:\n"
    "    pip install --no-build-isolation arctic-inference==0.3.0\n"
    "or, without a build toolchain for the torch in your environment:\n"
    "    pip install -c requirements/constraints-cpu.txt arctic-inference==0.3.0"
)

try:  # the C++ extension only; nothing else of arctic_inference is imported
    from arctic_inference.suffix_decoding._C import SuffixTree as _NativeSuffixTree
except ImportError as _exc:  # pragma: no cover - exercised only where the library is missing
    _NativeSuffixTree = None
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None


def new_tree(max_depth: int) -> Any:
    """A new, empty native suffix tree indexing suffixes up to ``max_depth`` tokens."""
    if _NativeSuffixTree is None:
        raise ImportError(INSTALL_HINT) from _IMPORT_ERROR
    return _NativeSuffixTree(max_depth)


def as_tokens(tokens: Any) -> np.ndarray:
    """``tokens`` as a contiguous 1-D int32 array (no copy when it already is one)."""
    arr = np.ascontiguousarray(tokens, dtype=np.int32)
    if arr.ndim != 1:
        raise ValueError(f"token arrays must be 1-D, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class Draft:
    """A chain draft for one request.

    ``token_ids`` are the proposed tokens, ``probs[i]`` the tree's empirical probability of the
    chain up to token i, ``score`` = sum(probs) (≈ expected accepted tokens), ``match_len`` the
    length of the context suffix that matched, ``source`` which tree produced it
    (``"request"``, ``"problem"``, ``"global"`` or ``""`` for no draft).
    """

    token_ids: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    score: float = 0.0
    match_len: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.token_ids)


EMPTY_DRAFT = Draft()


@dataclass
class SpeculateArgs:
    """Arguments of one ``speculate`` call, shared across a request's sources."""

    max_spec_tokens: int
    max_spec_factor: float = 1.0
    max_spec_offset: float = 0.0
    min_token_prob: float = 0.1


def speculate(tree: Any, pattern: np.ndarray, args: SpeculateArgs, source: str) -> Draft:
    """Best chain draft of ``tree`` for the context ``pattern`` (int32, last <= depth tokens)."""
    if args.max_spec_tokens <= 0 or pattern.size == 0:
        return EMPTY_DRAFT
    d = tree.speculate_ndarray(
        pattern,
        int(args.max_spec_tokens),
        float(args.max_spec_factor),
        float(args.max_spec_offset),
        float(args.min_token_prob),
        False,
    )
    if not d.token_ids:
        return EMPTY_DRAFT
    return Draft(tuple(d.token_ids), tuple(d.probs), float(d.score), int(d.match_len), source)
