"""Adapters that plug the GVM Budget client into RL frameworks.

Each adapter module imports its framework (``trainer_client.integrations.verl`` imports verl and
torch); importing this package imports none of them. The framework-free parts (turning a
batch's rows into observations, an allocation into prompt copies) live in ``_batch``.
"""
