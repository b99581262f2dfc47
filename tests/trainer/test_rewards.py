"""Exact-match arithmetic rewards and Math-Verify rewards on real MATH-500 answers."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from math_verify.errors import TimeoutException
from support import REPO

from trainer_client.trainer import rewards
from trainer_client.trainer.rewards import arithmetic_reward, extract_integer, math_reward, score
from trainer_client.trainer.tasks import arithmetic_problem, load_math

FIXTURE = REPO / "tests" / "fixtures" / "math500_subset.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("46", 46),
        ("46<|end|>", 46),
        ("12+34=46", 46),
        ("The answer is -7.", -7),
        ("= −7", -7),  # unicode minus
        ("12-5", 5),  # a minus after a digit is an operator
        ("+7", 7),
        ("1,234", 1234),
        ("46.0", 46),
        ("46.5", None),
        ("The answer is \\boxed{1,234}, not 5", 1234),
        ("\\boxed{3} then \\boxed{-4}", -4),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_integer(text: str, expected: int | None) -> None:
    assert extract_integer(text) == expected


def test_arithmetic_reward_is_exact_match() -> None:
    assert arithmetic_reward(" -63", "-63") == 1.0
    assert arithmetic_reward("63", "-63") == 0.0
    assert arithmetic_reward("630", "63") == 0.0
    assert arithmetic_reward("", "0") == 0.0


@pytest.mark.parametrize("row", ROWS, ids=[row["unique_id"] for row in ROWS])
def test_math_reward_on_math500_answers(row: dict[str, str]) -> None:
    response = f"Some working first.\nSo the final answer is $\\boxed{{{row['answer']}}}$."
    assert math_reward(response, row["answer"]) == 1.0
    wrong = f"So the final answer is $\\boxed{{{row['wrong_answer']}}}$."
    assert math_reward(wrong, row["answer"]) == 0.0


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}"),
        ("The answer is 14/3", "\\frac{14}{3}"),
        ("\\boxed{90}", "90^\\circ"),
        ("\\boxed{5}", "x=5"),
        ("\\boxed{6-5i}", "6 - 5i"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{3\\sqrt{13}}", "\\sqrt{117}"),
    ],
)
def test_math_reward_accepts_equivalent_forms(response: str, answer: str) -> None:
    assert math_reward(response, answer) == 1.0


def test_math_reward_scores_garbage_and_missing_answers_zero() -> None:
    assert math_reward("I do not know.", "42") == 0.0
    assert math_reward("\\boxed{", "42") == 0.0
    assert math_reward("", "\\frac{3}{56}") == 0.0


def test_math_reward_counts_a_verifier_timeout_as_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_verify(*args: object, **kwargs: object) -> bool:
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(rewards, "verify", slow_verify)
    assert math_reward("\\boxed{42}", "42") == 0.0


def test_math_reward_warns_about_an_unparseable_reference(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer_client.trainer.rewards"):
        assert math_reward("\\boxed{42}", "") == 0.0
    assert "cannot parse the reference answer" in caplog.text


def test_math_reward_refuses_other_threads() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            math_reward("\\boxed{42}", "42")
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


def test_score_dispatches_on_the_task() -> None:
    arithmetic = arithmetic_problem([12, 7], ["-"], level=3)
    assert score(arithmetic, "5") == 1.0
    assert score(arithmetic, "19") == 0.0
    math = load_math(FIXTURE, limit=3)[2]  # answer \frac{14}{3}
    assert score(math, "\\boxed{\\frac{14}{3}}") == 1.0
    assert score(math, "\\boxed{\\frac{3}{14}}") == 0.0
