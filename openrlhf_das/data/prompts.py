"""Prompt texts shared by the shipped datasets, and the chat-message wrapper.

Chat templates are the tokenizer's business: callers pass :func:`to_chat_messages` output to
``tokenizer.apply_chat_template``.
"""

from __future__ import annotations

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its "
    "signature and the imports it needs, in a single ```python code block."
)


def math_prompt(question: str) -> str:
    """User-message text for a math problem: the problem, then :data:`MATH_INSTRUCTION`."""
    return f"{question.strip()}\n{MATH_INSTRUCTION}"


def code_prompt(function_stub: str) -> str:
    """User-message text for a code problem: :data:`CODE_INSTRUCTION`, then the stub in a fence."""
    return f"{CODE_INSTRUCTION}\n\n```python\n{function_stub.strip()}\n```"


def to_chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """``[{"role": "user", "content": prompt}]``, preceded by a system message when given."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return messages
