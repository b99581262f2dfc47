"""Which prompts a run trains and evaluates on, and which of them each step draws."""

from __future__ import annotations

import random
from functools import lru_cache

from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.tasks import Problem, arithmetic_problems, load_math

EVAL_SEED = 1  # the held-out set is drawn with its own seed and excludes the training prompts


def load_problems(config: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """The training pool and the fixed held-out set (the same for every seed of a config)."""
    if config.task == "arithmetic":
        levels = config.level_cycle
        train = arithmetic_problems(config.train_prompts, seed=config.data_seed, levels=levels)
        held_out = arithmetic_problems(
            config.eval_prompts, seed=EVAL_SEED, levels=levels, exclude=[p.prompt_id for p in train]
        )
        return train, held_out
    problems = load_math(config.data)
    random.Random(config.data_seed).shuffle(problems)
    if len(problems) < config.eval_prompts + config.batch_size:
        raise ValueError(f"{config.data} has {len(problems)} problems: too few for this config")
    held_out = problems[: config.eval_prompts]
    return problems[config.eval_prompts :][: config.train_prompts], held_out


def batch_indices(step: int, config: TrainConfig, pool: int) -> list[int]:
    """The prompts of ``step``: epochs of seeded permutations, whole batches only (so the ids
    of a batch are distinct), derived from the step alone so a resumed run picks the same."""
    per_epoch = pool // config.batch_size
    epoch, index = divmod(step, per_epoch)
    order = _permutation(pool, config.seed, epoch)
    return list(order[index * config.batch_size : (index + 1) * config.batch_size])


@lru_cache(maxsize=4)
def _permutation(pool: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(pool))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return tuple(order)
