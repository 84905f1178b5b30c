"""SYNTHETIC rollout-trace generator (not model output!) for offline DAS replays.

The trace is a JSONL file (``.jsonl`` or ``.jsonl.zst``). Its first line is a header that
labels it synthetic::

    {"synthetic": true, "generator": "benchmarks/synthetic_trace.py", "seed": 0, "params": {...}}

and every further line is one response::

    {"step": 3, "problem_id": "p0007", "sample_index": 2,
     "prompt_token_ids": [...], "response_token_ids": [...]}

Model of RL rollouts (every number a CLI flag):

* ``P`` problems x ``G`` samples per problem x ``S`` RL steps; each step draws
  ``problems_per_step`` problems (default all), so W counts appearances, not steps.
* Per problem a latent *solution*: a sequence of segments, each either a phrase of a shared
  library (boilerplate such as "Let me verify" — what a global tree can exploit) or
  problem-specific tokens (Zipf-distributed ids). Responses of one problem are therefore
  similar to each other and to the problem's earlier responses, which is what DAS exploits.
* Response length is heavy-tailed per problem: the problem's base length is log-normal
  (``median_len``, ``len_sigma``; a few problems are much longer than the rest); a sample's
  length is the base times a log-normal factor (``sample_sigma``). Responses longer than the
  solution go back to an earlier point of it and copy on ("re-checking").
* A response is a noisy copy: per copied token a substitution (``p_sub``), an insertion of
  1-8 random tokens (``p_ins``) or a deletion (``p_del``); every response ends with ``eos_id``.
* Drift across steps: each time a problem appears again, a fraction ``drift`` of its segments
  are replaced and its base length is scaled by ``exp(N(length_drift, 0.05))`` (RL responses
  tend to grow).

Deterministic by ``seed``: the same arguments produce byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np


@dataclass(frozen=True)
class TraceParams:
    """Generator knobs. Lengths in tokens; probabilities per copied token."""

    problems: int = 24
    samples: int = 8
    steps: int = 4
    problems_per_step: int | None = None  # None = every problem in every step
    vocab: int = 32000
    zipf_a: float = 1.1
    prompt_len: tuple[int, int] = (32, 256)
    median_len: float = 400.0
    len_sigma: float = 0.9
    sample_sigma: float = 0.35
    min_len: int = 16
    max_len: int = 4096
    library_phrases: int = 256
    p_library: float = 0.3
    p_sub: float = 0.04
    p_ins: float = 0.02
    p_del: float = 0.02
    drift: float = 0.05
    length_drift: float = 0.02
    eos_id: int = 2


@dataclass
class _Problem:
    prompt: np.ndarray
    segments: list[np.ndarray]
    base_len: float


class SyntheticRollouts:
    """Stateful generator: ``step(s)`` yields the records of RL step ``s`` (call in order)."""

    def __init__(self, params: TraceParams, seed: int) -> None:
        self.p = params
        self.rng = np.random.default_rng(seed)
        self.library = [self._tokens(int(self.rng.integers(3, 12))) for _ in range(params.library_phrases)]
        self.problems = [self._new_problem() for _ in range(params.problems)]

    # ------------------------------------------------------------------ building blocks
    def _tokens(self, n: int) -> np.ndarray:
        """``n`` Zipf-distributed token ids in [3, vocab) (0-2 are reserved)."""
        z = self.rng.zipf(self.p.zipf_a, n)
        return (3 + (z - 1) % (self.p.vocab - 3)).astype(np.int32)

    def _segment(self) -> np.ndarray:
        if self.rng.random() < self.p.p_library:
            return self.library[int(self.rng.integers(len(self.library)))]
        return self._tokens(int(self.rng.integers(5, 21)))

    def _new_problem(self) -> _Problem:
        p = self.p
        base = float(np.clip(p.median_len * np.exp(self.rng.normal(0.0, p.len_sigma)), p.min_len, p.max_len))
        segments: list[np.ndarray] = []
        while sum(s.size for s in segments) < base:
            segments.append(self._segment())
        prompt = self._tokens(int(self.rng.integers(p.prompt_len[0], p.prompt_len[1] + 1)))
        return _Problem(prompt, segments, base)

    def _drift(self, prob: _Problem) -> None:
        for i in range(len(prob.segments)):
            if self.rng.random() < self.p.drift:
                prob.segments[i] = self._segment()
        prob.base_len = float(np.clip(prob.base_len * np.exp(self.rng.normal(self.p.length_drift, 0.05)), self.p.min_len, self.p.max_len))
        while sum(s.size for s in prob.segments) < prob.base_len:
            prob.segments.append(self._segment())

    def _response(self, prob: _Problem) -> np.ndarray:
        """A noisy copy of the solution of a heavy-tailed length, ending with EOS."""
        p, rng = self.p, self.rng
        target = int(np.clip(prob.base_len * np.exp(rng.normal(0.0, p.sample_sigma)), p.min_len, p.max_len)) - 1
        solution = np.concatenate(prob.segments)
        source: list[np.ndarray] = [solution]
        total = solution.size
        while total < target:  # re-check: resume copying from an earlier point of the solution
            start = int(rng.integers(0, max(1, solution.size - 1)))
            source.append(solution[start:])
            total += solution.size - start
        src = np.concatenate(source)[: int(target * 1.1) + 8]
        u = rng.random(src.size)
        out: list[np.ndarray] = []
        sub = u < p.p_sub
        ins = (u >= p.p_sub) & (u < p.p_sub + p.p_ins)
        keep = u >= p.p_sub + p.p_ins + p.p_del
        copied = src.copy()
        copied[sub] = self._tokens(int(sub.sum()))
        cuts = np.flatnonzero(ins)
        prev = 0
        for c in cuts:  # insertion points split the copy into pieces
            piece, mask = copied[prev:c], (keep | sub)[prev:c]
            out.append(piece[mask])
            out.append(self._tokens(int(rng.integers(1, 9))))
            prev = c
        out.append(copied[prev:][(keep | sub)[prev:]])
        body = np.concatenate(out)[:target]
        return np.append(body, np.int32(p.eos_id)).astype(np.int32)

    # ------------------------------------------------------------------ public
    def step(self, step: int) -> Iterator[dict[str, Any]]:
        p = self.p
        n = p.problems if p.problems_per_step is None else min(p.problems_per_step, p.problems)
        chosen = sorted(self.rng.choice(p.problems, size=n, replace=False).tolist())
        for i in chosen:
            prob = self.problems[i]
            if step > 0:
                self._drift(prob)
            for g in range(p.samples):
                yield {
                    "step": step,
                    "problem_id": f"p{i:04d}",
                    "sample_index": g,
                    "prompt_token_ids": prob.prompt.tolist(),
                    "response_token_ids": self._response(prob).tolist(),
                }


def header(params: TraceParams, seed: int) -> dict[str, Any]:
    return {
        "synthetic": True,
        "generator": "benchmarks/synthetic_trace.py",
        "description": "SYNTHETIC rollouts (noisy copies of latent per-problem solutions); not model output",
        "seed": seed,
        "params": asdict(params),
    }


def generate(params: TraceParams, seed: int) -> Iterator[dict[str, Any]]:
    """Header first, then every record of every step."""
    yield header(params, seed)
    gen = SyntheticRollouts(params, seed)
    for s in range(params.steps):
        yield from gen.step(s)


def open_text(path: str | Path, mode: str) -> IO[str]:
    """Text handle on ``path``; ``.zst`` files are (de)compressed with zstandard."""
    path = Path(path)
    if path.suffix != ".zst":
        return open(path, mode + "t", encoding="utf-8")
    import zstandard

    if mode == "w":
        return io.TextIOWrapper(zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb")), encoding="utf-8")
    return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")


def write_trace(path: str | Path, params: TraceParams, seed: int) -> int:
    """Write the trace; returns the number of response tokens written."""
    tokens = 0
    with open_text(path, "w") as f:
        for rec in generate(params, seed):
            tokens += len(rec.get("response_token_ids", ()))
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output path (.jsonl or .jsonl.zst)")
    ap.add_argument("--seed", type=int, default=0)
    defaults = TraceParams()
    for name, value in asdict(defaults).items():
        if name == "prompt_len":
            ap.add_argument("--prompt-len", type=int, nargs=2, default=list(value), metavar=("MIN", "MAX"))
        elif name == "problems_per_step":
            ap.add_argument("--problems-per-step", type=int, default=None)
        else:
            ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args()
    kw = {k: getattr(args, k) for k in asdict(defaults)}
    kw["prompt_len"] = tuple(kw["prompt_len"])
    params = TraceParams(**kw)
    tokens = write_trace(args.out, params, args.seed)
    n = params.samples * params.steps * (params.problems_per_step or params.problems)
    print(json.dumps({"out": args.out, "responses": n, "response_tokens": tokens, "synthetic": True}))


if __name__ == "__main__":
    main()
