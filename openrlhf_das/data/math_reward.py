"""Reward for math answers: the last ``\\boxed{...}`` of a response against a gold answer.

Equivalence is decided by Hugging Face's ``math-verify`` (LaTeX/number/set/interval parsing with
sympy), after a cheap exact-string check. math-verify bounds its time with ``SIGALRM``, which only
works in a process's main thread; OpenRLHF calls reward functions from other threads (its Ray
actors' event loops), where an unbounded sympy parse of a pathological answer would stall every
rollout of the engine. So off the main thread the comparison runs in a small worker-process pool
(:func:`call_with_timeout`), in the worker's main thread where the alarm works, and a worker that
still overruns is killed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import re
import threading
from typing import Any, Callable

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

logger = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


def strip_math_delimiters(text: str) -> str:
    """``text`` without surrounding whitespace and ``$`` math delimiters (``"$x$"`` -> ``"x"``)."""
    return text.strip().strip("$").strip()


def extract_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    Escaped braces (``\\{``, ``\\}``) do not count. Returns ``None`` when there is no such command
    or when the last one is not closed (e.g. a truncated generation); an earlier, complete box is
    then deliberately not used.
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    open_brace = start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox")
    while open_brace < len(text) and text[open_brace].isspace():
        open_brace += 1
    if open_brace >= len(text) or text[open_brace] != "{":
        return None
    depth = 0
    i = open_brace
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(text: str, *, lenient: bool = False) -> str | None:
    """The answer of a response: its last ``\\boxed{}`` (:func:`extract_last_boxed`); with
    ``lenient``, when it has none, its last number (``-12``, ``3.5``) — for models too small to
    follow the boxed-answer instruction (the ``arithmetic`` set of ``make demo``)."""
    boxed = extract_last_boxed(text)
    if boxed is not None or not lenient:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def math_reward(response_text: str, answer: str, *, timeout_s: int = 5, lenient: bool = False) -> float:
    """1.0 if the last ``\\boxed{}`` of ``response_text`` equals ``answer`` mathematically, else 0.0.

    Args:
        response_text: the model's full response.
        answer: gold answer, LaTeX or plain text (surrounding ``$`` are ignored).
        timeout_s: seconds allowed for each parse/compare step (math-verify's alarm). Off the main
            thread the comparison runs in a worker process and is abandoned (worker killed, 0.0)
            after ``3 * timeout_s + 5`` seconds.

        lenient: without a ``\\boxed{}``, compare the response's last number (:func:`final_answer`).

    Unparsable or missing answers score 0.0; this function does not raise on model output.
    """
    predicted = final_answer(response_text, lenient=lenient)
    if predicted is None:
        return 0.0
    predicted, gold = strip_math_delimiters(predicted), strip_math_delimiters(answer)
    if "".join(predicted.split()) == "".join(gold.split()):
        return 1.0
    if threading.current_thread() is threading.main_thread():
        return _compare(gold, predicted, timeout_s)
    try:
        return call_with_timeout(_compare, (gold, predicted, timeout_s), 3 * timeout_s + 5)
    except (TimeoutError, concurrent.futures.process.BrokenProcessPool) as exc:
        logger.warning("math_reward: comparing %r with %r gave up (%s): reward 0", predicted[:80], gold[:80], exc)
        return 0.0


def _compare(gold: str, predicted: str, timeout_s: int) -> float:
    """math-verify equivalence (call in a main thread: its timeouts use ``SIGALRM``)."""
    try:
        gold_parsed = parse(f"${gold}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
        predicted_parsed = parse(f"${predicted}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
        return 1.0 if verify(gold_parsed, predicted_parsed, timeout_seconds=timeout_s) else 0.0
    except Exception:  # noqa: BLE001 - math-verify raises on pathological input; that is a wrong answer
        return 0.0


_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
POOL_WORKERS = 2
"""Worker processes (spawned on first use, ~1 s; each imports math-verify once)."""


def call_with_timeout(fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
    """``fn(*args)`` in a worker process of a shared pool; raises ``TimeoutError`` after
    ``timeout_s`` seconds, having killed the pool's workers (the next call starts new ones).
    ``fn`` and ``args`` must be picklable (module-level functions)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ProcessPoolExecutor(POOL_WORKERS, mp_context=multiprocessing.get_context("spawn"))
        pool = _POOL
    future = pool.submit(fn, *args)
    try:
        return future.result(timeout=timeout_s)
    except (concurrent.futures.TimeoutError, concurrent.futures.process.BrokenProcessPool):
        with _POOL_LOCK:
            if _POOL is pool:
                _POOL = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} took longer than {timeout_s} s") from None
