"""The base classes of every wire model and the limits that more than one resource shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}$"
MAX_SAMPLES_PER_OBSERVATION = 1_000_000_000  # counts stay exact integers in float64
MAX_STEP = 2**53  # steps are stored as float64


class WireModel(BaseModel):
    """A request body: unknown fields rejected, JSON types taken literally ("8" is no int)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Answer(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="forbid")
