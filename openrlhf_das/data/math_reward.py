"""Reward for math answers: the last ``\\boxed{...}`` of a response against a gold answer.

Equivalence is decided by Hugging Face's ``math-verify`` (LaTeX/number/set/interval parsing with
sympy), after a cheap exact-string check.
"""

from __future__ import annotations

import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

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


def math_reward(response_text: str, answer: str, *, timeout_s: int = 5) -> float:
    """1.0 if the last ``\\boxed{}`` of ``response_text`` equals ``answer`` mathematically, else 0.0.

    Args:
        response_text: the model's full response.
        answer: gold answer, LaTeX or plain text (surrounding ``$`` are ignored).
        timeout_s: seconds allowed for each parse/compare step. math-verify enforces it with
            ``SIGALRM``, which only works in the main thread; called from any other thread the
            steps run without a time limit.

    Unparsable or missing answers score 0.0; this function does not raise on model output.
    """
    predicted = extract_last_boxed(response_text)
    if predicted is None:
        return 0.0
    predicted, gold = strip_math_delimiters(predicted), strip_math_delimiters(answer)
    if "".join(predicted.split()) == "".join(gold.split()):
        return 1.0
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"${gold}$", extraction_config=_EXTRACTION, parsing_timeout=timeout)
        predicted_parsed = parse(f"${predicted}$", extraction_config=_EXTRACTION, parsing_timeout=timeout)
        return 1.0 if verify(gold_parsed, predicted_parsed, timeout_seconds=timeout) else 0.0
    except Exception:  # noqa: BLE001 - math-verify raises on pathological input; that is a wrong answer
        return 0.0
