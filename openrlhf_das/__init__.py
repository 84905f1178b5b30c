"""openrlhf-das: Distribution-Aware Speculative decoding (DAS, arXiv 2511.13841) for OpenRLHF rollouts.

Layers (see docs/design.md):

* ``openrlhf_das.drafter`` – suffix-tree drafter core (no vLLM / Ray / OpenRLHF imports).
* ``openrlhf_das.policy``  – length-aware budgets, batch gate, acceptance bookkeeping.
* ``openrlhf_das.config``  – the validated ``DASConfig``.
* ``openrlhf_das.engines.vllm`` – vLLM V1 proposer plugin.
* ``openrlhf_das.ray``, ``openrlhf_das.integrations.openrlhf``, ``openrlhf_das.reports``,
  ``openrlhf_das.cli`` – history actor, trainer integration, reports, entry points.
"""

__version__ = "0.1.0"
