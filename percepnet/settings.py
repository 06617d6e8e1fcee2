"""Per-stream runtime settings of the enhancer: one typed, immutable object.

A stream's settings change as a whole (`dataclasses.replace`), are validated when made,
and carry their attenuation limit already converted to the gain floor it means, so no
frame converts decibels again. The enhancer holds the object it was given; whoever
changes a setting gives it a new one (Enhancer.apply).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_ATTENUATION_DB = 100.0
"""Largest attenuation limit taken (dB), by the service's stream control and the CLI."""


class SettingsError(ValueError):
    """A setting out of its range or of the wrong type."""


@dataclass(frozen=True)
class StreamSettings:
    """What a listener may change on a running stream.

    enabled: False gives unity gains (the stream stays continuous and equally delayed).
    attenuation_limit_db: floor of the band gains g, in dB below unity, in
    [0, MAX_ATTENUATION_DB]; None: no floor.
    """

    enabled: bool = True
    attenuation_limit_db: float | None = None
    gain_floor: float = field(init=False, repr=False, compare=False, default=0.0)
    """10^(-limit/20): the linear floor of g (0.0: no floor), computed once here."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SettingsError("enabled must be true or false")
        limit = self.attenuation_limit_db
        if limit is None:
            return
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise SettingsError("attenuation_limit_db must be a number or null")
        if not (math.isfinite(limit) and 0.0 <= limit <= MAX_ATTENUATION_DB):
            raise SettingsError(f"attenuation_limit_db must be in [0, {MAX_ATTENUATION_DB}]")
        object.__setattr__(self, "attenuation_limit_db", float(limit))
        object.__setattr__(self, "gain_floor", gain_floor(limit))


def gain_floor(limit_db: float | None) -> float:
    """The linear band-gain floor an attenuation limit of `limit_db` dB means (0: none)."""
    return 0.0 if limit_db is None else 10.0 ** (-abs(limit_db) / 20.0)
