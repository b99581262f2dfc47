"""Helpers shared by the tests (fixtures themselves live in tests/conftest.py).

- `services`: live service processes (`ServiceProcess`, `service_env`).
- `readme`: the docs' tested blocks and sections.
- `cases`: the one table of bad observations and uniform splits, run against service and client.
- `faultproxy`: a TCP proxy that injects faults between the service and Redis.
- `browser`: headless Chromium limited to loopback.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
