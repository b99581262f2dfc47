"""Every console script's ``--help``: plain text, every option explained, fast (no torch)."""

import argparse
import resource
import subprocess
import sys
import time

import pytest

from budget_service.cli import _parser as budget_parser
from trainer_client.trainer.config import build_parser as train_parser
from trainer_client.trainer.demo import build_parser as demo_parser

# Runs a console script's entry point as the installed script does, then names the heavy
# modules that `--help` pulled in.
HELP = """
import sys
from importlib.metadata import entry_points
(script,) = entry_points(group="console_scripts", name=sys.argv[1])
try:
    script.load()(sys.argv[2:])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = {"torch", "transformers", "uvicorn", "fastapi", "redis", "numpy"}
print("imported:", sorted(heavy & sys.modules.keys()), file=sys.stderr)
"""
COMMANDS = [["gvm-budget"], ["gvm-budget", "serve"], ["gvm-train"], ["gvm-demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_is_plain_fast_and_imports_no_torch(command: list[str]) -> None:
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", HELP, *command, "--help"], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert "imported: []" in done.stderr, done.stderr
    # CPU time does not grow with the machine's load: ~0.4 s here (importing torch: 3-10 s)
    assert cpu < 1, f"{cpu:.2f} CPU-s"
    assert seconds < 5, f"{seconds:.2f} s"  # wall time: generous for a loaded 2-core CI
    assert done.stdout.startswith(f"usage: {' '.join(command)}")
    for markup in ("``", "`", "**", ":class:", "\\n"):
        assert markup not in done.stdout, markup


def test_serve_help_says_where_redis_and_the_port_come_from() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "budget_service.cli", "serve", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for needed in ("embedded Redis", "REDIS_URL", "GVM_DATA_DIR", "GVM_PORT", "--port"):
        assert needed in done.stdout, needed


def parsers() -> list[argparse.ArgumentParser]:
    found = [budget_parser(), train_parser(), demo_parser()]
    for action in found[0]._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += action.choices.values()
    return found


@pytest.mark.parametrize("parser", parsers(), ids=lambda p: p.prog)
def test_every_option_has_help(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        assert action.help, action.option_strings
        assert action.help != argparse.SUPPRESS, action.option_strings
