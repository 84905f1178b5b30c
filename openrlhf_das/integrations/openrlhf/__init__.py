"""DAS for OpenRLHF 0.11.x (``python -m openrlhf_das.cli.train``; see ``docs/openrlhf.md``).

Modules (importing this package imports none of the heavy ones):

* :mod:`.settings` – DAS config + integration settings, carried to every process by env vars.
* :mod:`.problem_ids` – stable problem ids (explicit row id, else sha1 of the prompt text).
* :mod:`.patches` – ``apply()``: patches OpenRLHF in the current process (also the Ray
  ``worker_process_setup_hook``), and the flash-attn shim where flash-attn is missing.
* :mod:`.engines` – ``DASRolloutActor`` / ``create_vllm_engines`` (imports vLLM + OpenRLHF).
* :mod:`.worker` – ``DASWorkerWrap`` (OpenRLHF ``WorkerWrap`` + DAS worker RPCs).
* :mod:`.samples` – step-boundary hooks on ``SamplesGenerator``.
* :mod:`.data_recipes` – shipped datasets → OpenRLHF prompt JSONL.
* ``reward_funcs/`` – ``reward_func(queries, prompts, labels)`` files for ``--reward.remote_url``.
"""

from .problem_ids import problem_id_for_row, prompt_hash
from .settings import DAS_CONFIG_ENV, HISTORY_ACTOR_NAME, INTEGRATION_ENV, IntegrationSettings

SETUP_HOOK = "openrlhf_das.integrations.openrlhf.patches.apply"
"""Ray ``worker_process_setup_hook`` applying the patches in every worker."""

__all__ = [
    "DAS_CONFIG_ENV",
    "HISTORY_ACTOR_NAME",
    "INTEGRATION_ENV",
    "IntegrationSettings",
    "SETUP_HOOK",
    "problem_id_for_row",
    "prompt_hash",
]
