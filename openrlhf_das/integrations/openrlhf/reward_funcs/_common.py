"""Shared by the reward-function files: cut the response out of OpenRLHF's ``query``."""

from __future__ import annotations

END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>", "<|end|>")


def response_text(query: str, prompt: str) -> str:
    """The generated part of ``query`` (= decode(prompt tokens + response tokens)), without a
    trailing end-of-turn marker. Falls back to the text after the last occurrence of the
    prompt's tail, then to the whole query, when decoding did not reproduce the prompt."""
    if isinstance(prompt, str) and prompt and query.startswith(prompt):
        text = query[len(prompt):]
    elif isinstance(prompt, str) and len(prompt) >= 32 and prompt[-32:] in query:
        text = query[query.rindex(prompt[-32:]) + 32:]
    else:
        text = query
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text
