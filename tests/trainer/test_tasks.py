"""The arithmetic task family and the MATH-style JSONL loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import REPO
from transformers import PreTrainedTokenizerFast

from trainer_client.trainer.tasks import (
    LEVELS,
    MATH_INSTRUCTION,
    arithmetic_problem,
    arithmetic_problems,
    chat_prompt,
    encode_prompts,
    load_math,
)
from trainer_client.trainer.tiny import build_tokenizer

FIXTURE = REPO / "tests" / "fixtures" / "math500_subset.jsonl"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def evaluate(expression: str) -> int:
    """Left-to-right + and - over integers, independent of the code under test."""
    terms = re.findall(r"[+-]?\d+", expression)
    return sum(int(term) for term in terms)


def test_answers_are_exact_and_levels_follow_the_table() -> None:
    problems = arithmetic_problems(600, seed=3)
    assert [p.level for p in problems[:12]] == [1, 2, 3, 4, 5, 6] * 2
    for problem in problems:
        expression = problem.prompt_id.removeprefix("arith/")
        assert problem.question == f"What is {expression}?"
        assert int(problem.answer) == evaluate(expression)
        operands = re.findall(r"\d+", expression)
        spec = LEVELS[problem.level]
        assert len(operands) == spec.ops + 1
        assert all(len(o) == spec.digits for o in operands)
        assert problem.task == "arithmetic"


def test_deterministic_distinct_and_seed_dependent() -> None:
    first = arithmetic_problems(120, seed=11)
    assert first == arithmetic_problems(120, seed=11)
    assert len({p.prompt_id for p in first}) == 120
    assert first != arithmetic_problems(120, seed=12)


def test_exclude_gives_disjoint_sets_even_for_the_smallest_level() -> None:
    train = arithmetic_problems(150, seed=0, levels=[1])
    held_out = arithmetic_problems(50, seed=1, levels=[1], exclude=(p.prompt_id for p in train))
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    with pytest.raises(ValueError, match="level 1 ran out of distinct problems"):
        arithmetic_problems(201, seed=0, levels=[1])


def test_rejects_unknown_levels_and_operators() -> None:
    with pytest.raises(ValueError, match=r"unknown arithmetic levels \[9\]"):
        arithmetic_problems(3, levels=[1, 9])
    with pytest.raises(ValueError, match="unsupported operator"):
        arithmetic_problem([1, 2], ["*"], level=1)
    assert arithmetic_problem([12, 7, 30], ["-", "+"], level=4).answer == "35"


def test_load_math_reads_the_vendored_math500_subset() -> None:
    problems = load_math(FIXTURE)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert len(problems) == len(rows) == 40
    first = problems[0]
    assert first.prompt_id == "math/test/precalculus/807.json"
    assert first.question == f"{rows[0]['problem']}\n\n{MATH_INSTRUCTION}"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (first.task, first.level) == ("math", 2)
    assert len(load_math(FIXTURE, limit=5)) == 5


def test_load_math_hashes_a_missing_id_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "no answer"}\n')
    with pytest.raises(ValueError, match=r"tasks.jsonl:3: expected a JSON object"):
        load_math(path)
    path.write_text('{"problem": "1+1?", "answer": "2"}\n')
    (problem,) = load_math(path)
    assert re.fullmatch(r"math/[0-9a-f]{16}", problem.prompt_id)
    assert problem.level == 0


def test_chat_prompt_and_encoding(tokenizer: PreTrainedTokenizerFast) -> None:
    problem = arithmetic_problem([12, 7], ["+"], level=3)
    text = chat_prompt(tokenizer, problem)
    assert text == "<|bos|><|user|>What is 12+7?<|end|><|assistant|>"
    (ids,) = encode_prompts(tokenizer, [problem])
    assert tokenizer.decode(ids) == text
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    # Digits are one token each, so the model sees operands digit by digit.
    assert [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).isdigit()] == list("127")
