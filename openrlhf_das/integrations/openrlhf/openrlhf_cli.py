"""OpenRLHF's ``train_ppo_ray`` command line, from the outside.

OpenRLHF builds its argparse parser inside ``if __name__ == "__main__":`` of
``openrlhf/cli/train_ppo_ray.py``, so it cannot be imported. :func:`parse_args` runs that block
(``runpy`` with ``run_name="__main__"``) and stops it right after parsing, at OpenRLHF's own
``hierarchize`` call, returning OpenRLHF's real, fully defaulted ``args`` (``args.vllm.num_engines``
...) without starting anything. :func:`run` runs the module for real.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any, Sequence

MODULE = "openrlhf.cli.train_ppo_ray"


class _Parsed(BaseException):
    def __init__(self, args: Any) -> None:
        super().__init__()
        self.parsed = args


def parse_args(argv: Sequence[str]) -> Any:
    """OpenRLHF's hierarchized args for ``argv`` (argparse errors exit with status 2, as
    OpenRLHF would). Imports OpenRLHF's trainer modules (DeepSpeed, vLLM; ~10 s cold)."""
    from .flash_attn_shim import ensure_flash_attn

    ensure_flash_attn()
    import openrlhf.utils.config as config_mod

    original = config_mod.hierarchize

    def capture(args: Any) -> Any:
        raise _Parsed(original(args))

    saved_argv = sys.argv
    config_mod.hierarchize = capture
    sys.argv = [MODULE, *argv]
    try:
        runpy.run_module(MODULE, run_name="__main__", alter_sys=False)
    except _Parsed as parsed:
        return parsed.parsed
    finally:
        config_mod.hierarchize = original
        sys.argv = saved_argv
    raise RuntimeError(f"{MODULE} no longer calls openrlhf.utils.config.hierarchize after parsing")


def run(argv: Sequence[str]) -> int:
    """``python -m openrlhf.cli.train_ppo_ray *argv`` in this process; its exit status."""
    saved_argv = sys.argv
    sys.argv = [MODULE, *argv]
    try:
        runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
    return 0
