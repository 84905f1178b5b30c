"""``DASWorkerWrap``: OpenRLHF's vLLM worker extension plus the DAS worker RPCs.

vLLM mixes the class named by ``worker_extension_cls`` into its worker, in the engine process
(and in every TP worker). This one keeps OpenRLHF's weight-sync RPCs (``init_process_group``,
``update_weight``, ``update_weight_cuda_ipc``) and adds ``das_load_snapshot`` /
``das_get_stats`` (:class:`~openrlhf_das.engines.vllm.worker_extension.DASWorkerExtension`).
Rollout actors reach them through ``das_rpc`` → ``collective_rpc``.
"""

from __future__ import annotations

from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap

from ...engines.vllm.worker_extension import DASWorkerExtension

WORKER_WRAP = "openrlhf_das.integrations.openrlhf.worker.DASWorkerWrap"


class DASWorkerWrap(WorkerWrap, DASWorkerExtension):
    """OpenRLHF ``WorkerWrap`` + DAS RPCs (``das_load_snapshot``, ``das_get_stats``)."""
