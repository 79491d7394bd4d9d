"""The base of every config section (run configs and pipeline configs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked without silent coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
