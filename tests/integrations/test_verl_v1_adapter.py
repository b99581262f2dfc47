"""The verl 0.8+ adapter (trainer_client.integrations.verl_v1).

The framework-free parts run here. The adapter itself needs verl 0.9.1 and its v1 trainer's
dependencies (TransferQueue, Ray), kept out of the main environment, so the slow test runs
tests/integrations/verl_v1_adapter_checks.py inside .venv-verl09 (built by
`bash .ci/verl09-env`) against the live service. In CI a missing .venv-verl09 is a failure, not
a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO
from support.venv_checks import run_checks

from trainer_client.integrations._batch import dataset_prompt_ids, prompt_id, row_counts

VERL09_PYTHON = REPO / ".venv-verl09" / "bin" / "python"
CHECKS = 11  # tests in verl_v1_adapter_checks.py, parametrised cases counted


# --- one count per prompt -> one count per row -------------------------------------------------


def test_distinct_prompts_keep_their_counts() -> None:
    assert row_counts(["a", "b", "c"], [2, 7, 3]) == [2, 7, 3]


def test_a_prompt_on_two_rows_splits_its_count_without_a_group_of_one() -> None:
    # "a" has 5 over rows 0 and 2: 3 + 2; "b" has 3 over rows 1 and 3: one group of 3, not 2 + 1
    assert row_counts(["a", "b", "a", "b"], [5, 3]) == [3, 3, 2, 0]
    assert row_counts(["a", "a", "a"], [6]) == [2, 2, 2]
    assert row_counts(["a", "a"], [9]) == [5, 4]


def test_the_floor_is_the_smallest_share() -> None:
    assert row_counts(["a", "a", "a"], [4], floor=1) == [2, 1, 1]
    assert row_counts(["a", "a", "a"], [4], floor=2) == [2, 2, 0]
    assert row_counts(["a", "a"], [0]) == [0, 0]


def test_counts_that_do_not_match_the_prompts_are_refused() -> None:
    with pytest.raises(ValueError, match="2 counts for 1 distinct prompts"):
        row_counts(["a", "a"], [2, 2])
    with pytest.raises(ValueError, match="floor"):
        row_counts(["a"], [2], floor=0)


# --- prompt ids ---------------------------------------------------------------------------------


def test_a_prompt_id_is_the_data_source_and_the_index() -> None:
    assert prompt_id("openai/gsm8k", 7) == "openai/gsm8k:7"


def test_rows_read_one_by_one_must_have_ids_of_their_own() -> None:
    rows = [{"data_source": "a", "index": 0}, {"data_source": "b", "index": 0}]
    assert dataset_prompt_ids(rows) == ["a:0", "b:0"]
    with pytest.raises(ValueError, match="rows 0 and 1 share the prompt id 'a:0'"):
        dataset_prompt_ids([{"data_source": "a", "index": 0}, {"data_source": "a"}])


# --- against verl 0.9.1 itself ------------------------------------------------------------------


@pytest.mark.slow
def test_the_adapter_against_verl_0_9(service_url: str, tmp_path: Path) -> None:
    run_checks(
        VERL09_PYTHON,
        "tests/integrations/verl_v1_adapter_checks.py",
        build="bash .ci/verl09-env",
        service_url=service_url,
        tmp_path=tmp_path,
        expected=CHECKS,
    )
