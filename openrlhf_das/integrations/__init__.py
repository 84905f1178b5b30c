"""Integrations of DAS into RL trainers (``openrlhf_das.integrations.openrlhf``)."""
