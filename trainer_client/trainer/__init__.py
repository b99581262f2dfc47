"""The reference trainer (torch, transformers, optionally vLLM): ``gvm-train`` and ``gvm-demo``.

Imported only by those who train; ``trainer_client`` itself (the HTTP client) never imports it.
"""
