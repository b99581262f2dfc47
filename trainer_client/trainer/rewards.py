"""Rewards: 1.0 when a response's final answer matches the reference, else 0.0.

Arithmetic answers are integers compared exactly after a forgiving extraction. Math answers are
compared with Math-Verify (`math_verify.parse` / `verify`), the verifier the GVM paper used; its
time limits rely on `signal.alarm`, so math rewards must be computed in the main thread.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from decimal import Decimal, InvalidOperation

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from trainer_client.trainer.tasks import Problem

logger = logging.getLogger(__name__)

_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
# A signed number, where a sign right after a digit is an operator: "= -7" is -7, "12-5" ends in 5.
_NUMBER = re.compile(r"(?<![\d.,])[-−+]?\d(?:[\d,]*\d)?(?:\.\d+)?")


def extract_integer(text: str) -> int | None:
    """The final integer answer in `text`, or None.

    The last `\\boxed{...}` wins if there is one, else the last number in the text. Accepts
    `1,234`, a unicode minus, `+7` and `46.0`; a number with a non-zero fraction is not an
    integer answer (None).
    """
    boxed = _BOXED.findall(text)
    candidates = _NUMBER.findall(boxed[-1] if boxed else text)
    if not candidates:
        return None
    token = candidates[-1].replace(",", "").replace("−", "-")
    try:
        value = Decimal(token)
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


def arithmetic_reward(text: str, answer: str) -> float:
    """Exact match of the response's final integer with the reference."""
    return 1.0 if extract_integer(text) == int(answer) else 0.0


@functools.lru_cache(maxsize=4096)
def _parse_reference(answer: str, timeout_s: int) -> list[object]:
    """The parsed reference (one parse per prompt, not per sample); [] when it cannot be parsed."""
    try:
        parsed: list[object] = parse(
            f"\\boxed{{{answer}}}",
            extraction_config=[LatexExtractionConfig()],
            parsing_timeout=timeout_s,
            raise_on_error=True,
        )
    except (Exception, TimeoutException):  # same breadth as in math_reward; the caller warns
        return []
    return parsed


def math_reward(text: str, answer: str, *, timeout_s: int = 5) -> float:
    """Math-Verify equivalence of the response's final answer with the reference.

    `answer` is the reference in LaTeX, without `\\boxed{}` (as in MATH-500); the response is
    searched for a `\\boxed{}` answer first, then for any LaTeX or plain expression. Each parse
    and the comparison are cut off after `timeout_s` seconds; a timeout or a parser failure is
    a wrong answer (0.0), logged at debug level.
    """
    if threading.current_thread() is not threading.main_thread():
        # Math-Verify's time limit is SIGALRM, which only the main thread receives.
        raise RuntimeError("math_reward needs the main thread (Math-Verify times out via SIGALRM)")
    gold = _parse_reference(answer, timeout_s)
    if not gold:
        logger.warning("Math-Verify cannot parse the reference answer %r: scored 0", answer)
        return 0.0
    try:
        predicted = parse(text, parsing_timeout=timeout_s, raise_on_error=True)
        correct = verify(gold, predicted, timeout_seconds=timeout_s, raise_on_error=True)
    # Math-Verify raises sympy and parser errors of many kinds; its timeout is a BaseException.
    except (Exception, TimeoutException) as exc:
        logger.debug("math answer %r scored 0 (%s: %s)", answer, type(exc).__name__, exc)
        return 0.0
    return 1.0 if correct else 0.0


def score(problem: Problem, text: str) -> float:
    """The reward of one response to `problem`, by its task."""
    if problem.task == "arithmetic":
        return arithmetic_reward(text, problem.answer)
    return math_reward(text, problem.answer)
