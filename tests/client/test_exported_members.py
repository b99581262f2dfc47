"""The client's public surface is curated: everything in ``__all__`` exists, nothing else leaks."""

import subprocess
import sys
from types import ModuleType

import trainer_client


def test_all_is_sorted_and_complete() -> None:
    # Submodules (client, errors, models, spool, trainer) are importable, not re-exported names.
    public = {
        name
        for name, value in vars(trainer_client).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(trainer_client.__all__) - {"__version__"}
    assert trainer_client.__all__ == sorted(trainer_client.__all__)


def test_exported_classes_are_ours() -> None:
    for name in trainer_client.__all__:
        member = getattr(trainer_client, name)
        if isinstance(member, type):
            assert member.__module__.startswith("trainer_client."), name


def test_importing_the_client_does_not_import_torch_or_the_service() -> None:
    code = (
        "import sys, trainer_client, trainer_client.client; "
        "bad = [m for m in ('torch', 'budget_service', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
