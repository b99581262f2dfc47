"""The committed HTTP contract: `openapi.json` at the repository root is the app's schema.

    python -m budget_service.openapi            # rewrite openapi.json from the app
    python -m budget_service.openapi --check    # exit 1 if it is stale

The dump is canonical (sorted keys, two-space indent, one trailing newline), so a change to the
API shows up as a reviewed diff of that file and nothing else does. The schema does not depend on
settings; no Redis is needed (the app's lifespan is not run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from budget_service.app import create_app
from budget_service.settings import Settings

COMMITTED = Path(__file__).resolve().parents[1] / "openapi.json"
REGENERATE = "python -m budget_service.openapi"


def schema() -> dict[str, Any]:
    """The OpenAPI document the app serves at /openapi.json."""
    return create_app(Settings(log_level="warning")).openapi()


def render(document: dict[str, Any]) -> str:
    """The canonical text of a schema: what is committed and what the drift test compares."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=REGENERATE, description="Write (or --check) the committed OpenAPI schema."
    )
    parser.add_argument("--output", type=Path, default=COMMITTED, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render(schema())
    current = args.output.read_text() if args.output.exists() else None
    if args.check:
        if current == text:
            return 0
        print(f"{args.output} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
        return 1
    if current != text:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
