"""Prompt sets the trainer learns on: a synthetic arithmetic family and MATH-style JSONL.

A `Problem` is one prompt with its reference answer. The `prompt_id` is what the budget service
keys its statistics by, so it is derived from the problem's content and is the same in every run.

The arithmetic family has exact integer answers and graded difficulty: level L fixes the operand
length and the number of operations (`LEVELS`), so a small model that has learned some of it has
acceptance rates that differ from prompt to prompt, which is what GVM's allocation feeds on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

TaskName = Literal["arithmetic", "math"]

MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
"""Appended to every MATH-style problem: the instruction the GVM paper's evaluation uses."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One prompt of a task and its reference answer."""

    prompt_id: str  # stable across runs: derived from the content, never from a position
    question: str  # the user message, before any chat template
    answer: str  # an integer for arithmetic; a LaTeX expression for math
    task: TaskName
    level: int  # difficulty, 1 = easiest (MATH's own 1-5 for math, 0 when unknown)


@dataclass(frozen=True, slots=True)
class Level:
    """One arithmetic difficulty: `ops` additions/subtractions of `digits`-digit operands."""

    digits: int
    ops: int


LEVELS: dict[int, Level] = {
    1: Level(digits=1, ops=1),
    2: Level(digits=1, ops=2),
    3: Level(digits=2, ops=1),
    4: Level(digits=2, ops=2),
    5: Level(digits=3, ops=1),
    6: Level(digits=3, ops=2),
}
"""Difficulty grows with operand length and with the number of operations."""


def arithmetic_problem(operands: Sequence[int], operators: Sequence[str], level: int) -> Problem:
    """The problem for one expression, e.g. operands (12, 7, 3) and operators ('+', '-')."""
    if len(operands) != len(operators) + 1 or not operators:
        raise ValueError("need one more operand than operators, and at least one operator")
    expression = str(operands[0])
    value = operands[0]
    for op, operand in zip(operators, operands[1:], strict=True):
        if op == "+":
            value += operand
        elif op == "-":
            value -= operand
        else:
            raise ValueError(f"unsupported operator {op!r}: use '+' or '-'")
        expression += f"{op}{operand}"
    return Problem(
        prompt_id=f"arith/{expression}",
        question=f"What is {expression}?",
        answer=str(value),
        task="arithmetic",
        level=level,
    )


def random_problem(rng: random.Random, level: int) -> Problem:
    """One problem of `level` with operands and operators drawn from `rng`."""
    spec = LEVELS[level]
    low = 0 if spec.digits == 1 else 10 ** (spec.digits - 1)
    high = 10**spec.digits - 1
    operands = [rng.randint(low, high) for _ in range(spec.ops + 1)]
    operators = [rng.choice("+-") for _ in range(spec.ops)]
    return arithmetic_problem(operands, operators, level)


def arithmetic_problems(
    n: int,
    *,
    seed: int = 0,
    levels: Iterable[int] = tuple(LEVELS),
    exclude: Iterable[str] = (),
) -> list[Problem]:
    """`n` distinct arithmetic problems, cycling through `levels` in order.

    Deterministic in (n, seed, levels, exclude). `exclude` holds prompt ids to leave out, e.g. a
    training set's, so that an evaluation set drawn with another seed is disjoint from it.
    """
    levels = tuple(levels)
    if unknown := sorted(set(levels) - set(LEVELS)):
        raise ValueError(f"unknown arithmetic levels {unknown}; known: {sorted(LEVELS)}")
    if n > 0 and not levels:
        raise ValueError("levels must not be empty")
    rng = random.Random(seed)
    seen = set(exclude)
    problems: list[Problem] = []
    for i in range(n):
        level = levels[i % len(levels)]
        # Level 1 has only 200 distinct problems: bound the search instead of looping forever.
        for _ in range(1000):
            problem = random_problem(rng, level)
            if problem.prompt_id not in seen:
                break
        else:
            raise ValueError(f"level {level} ran out of distinct problems; ask for fewer than {n}")
        seen.add(problem.prompt_id)
        problems.append(problem)
    return problems


def load_math(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Problems from a MATH-style JSONL file with at least `problem` and `answer` per line.

    `answer` is the reference in LaTeX without `\\boxed{}`. The prompt id is `math/<unique_id>`
    when the line has a `unique_id` (MATH-500 does), else `math/` plus a hash of the problem.
    """
    problems: list[Problem] = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem, answer = str(row["problem"]), str(row["answer"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with 'problem' and 'answer' ({exc})"
                ) from exc
            unique = row.get("unique_id") or hashlib.sha256(problem.encode()).hexdigest()[:16]
            problems.append(
                Problem(
                    prompt_id=f"math/{unique}",
                    question=f"{problem}\n\n{MATH_INSTRUCTION}",
                    answer=answer,
                    task="math",
                    level=int(row.get("level") or 0),
                )
            )
            if limit is not None and len(problems) >= limit:
                break
    return problems


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompt formatting needs."""

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, tokenize: bool, add_generation_prompt: bool
    ) -> object: ...

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...


def chat_prompt(tokenizer: ChatTokenizer, problem: Problem) -> str:
    """The problem as one user turn in the tokenizer's chat template, ready for the reply."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(text, str):
        raise TypeError(f"chat template rendered {type(text).__name__}, expected str")
    return text


def encode_prompts(tokenizer: ChatTokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Token ids of each chat-formatted prompt (the template adds its own special tokens)."""
    return [
        tokenizer.encode(chat_prompt(tokenizer, problem), add_special_tokens=False)
        for problem in problems
    ]
