"""The prompt data both verl adapters' checks train on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_dataset(path: Path, prompts: int) -> Path:
    """A parquet in verl's preprocessed layout (as examples/data_preprocess/gsm8k.py writes).

    Two data sources with overlapping extra_info.index values: prompt ids must use both fields.
    """
    rows = [
        {
            "data_source": "openai/gsm8k" if i % 2 == 0 else "math",
            "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"split": "train", "index": i // 2},
        }
        for i in range(prompts)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path
