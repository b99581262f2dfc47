"""Warnings TRL 1.16's own code raises on transformers >= 5.25, which renamed gradient
checkpointing to activation checkpointing (the old names go in v6). Our GVMGRPOConfig passes the
setting on under the new name; TRL's trainer still calls the model's old-name methods
(`is_gradient_checkpointing`, `gradient_checkpointing_disable`/`_enable`)."""

import pytest

TRL_READS_OLD_CHECKPOINTING_NAME = pytest.mark.filterwarnings(
    "ignore:`(is_gradient_checkpointing|gradient_checkpointing_(disable|enable))` is deprecated"
    ":FutureWarning"
)
# Only for a plain trl.GRPOConfig (which GVMGRPOConfig is compared with): TRL defaults the old name.
PLAIN_TRL_CONFIG = pytest.mark.filterwarnings(
    "ignore:`gradient_checkpointing` is deprecated:FutureWarning"
)
