"""The package's log lines in processes vLLM starts (engine core, workers): the plugin sends
them through vLLM's handlers there, and leaves logging alone where an application configured it.
Run in fresh interpreters (a vLLM engine process starts with no root handler; pytest's has one)."""

from __future__ import annotations

import subprocess
import sys

_EMIT = """
import logging, sys
import vllm.logger  # vLLM configures its own handlers on import
{setup}
from openrlhf_das.engines.vllm.plugin import share_vllm_log_handlers
print("attached", share_vllm_log_handlers(), share_vllm_log_handlers())
logging.getLogger("openrlhf_das.engines.vllm.device_proposer").info("DAS line at info")
"""


def _run(setup: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _EMIT.format(setup=setup)], capture_output=True, text=True,
                          timeout=300, check=True)


def test_info_lines_reach_vllm_handlers_in_a_bare_process():
    out = _run()
    assert "attached True False" in out.stdout  # attached once, idempotent
    assert "DAS line at info" in out.stdout + out.stderr


def test_configured_logging_is_left_alone():
    out = _run("logging.basicConfig(level=logging.WARNING)")
    assert "attached False False" in out.stdout
    assert "DAS line at info" not in out.stdout + out.stderr  # the application's level decides
