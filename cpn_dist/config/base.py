"""The base of every config section (run configs and pipeline configs), and the constrained types
their keys share: a value that breaks one fails with a message naming the key (and the list index)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.types import NonNegativeFloat, PositiveFloat, PositiveInt

__all__ = ["NonNegativeFloat", "Pair", "PositiveFloat", "PositiveInt", "Section", "ascending"]

T = TypeVar("T")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked without silent coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def ascending(pair: list) -> list:
    """The check of :data:`Pair`: low <= high."""
    if not pair[0] <= pair[1]:
        raise ValueError(f"need low <= high, got [{pair[0]}, {pair[1]}]")
    return pair


# [low, high], low <= high: ``Pair[PositiveInt]``
Pair = Annotated[list[T], Field(min_length=2, max_length=2), AfterValidator(ascending)]
