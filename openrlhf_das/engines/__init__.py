"""Inference-engine adapters (only vLLM V1 today)."""
