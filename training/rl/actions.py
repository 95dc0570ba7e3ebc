"""The six trading actions: the single source of truth.

The environment, the API, the stream events and the admin all use this enum, so
training and serving can never disagree about what an action code means.
"""

from __future__ import annotations

import enum


class Action(enum.IntEnum):
    HOLD = 0  # nothing
    LONG = 1  # open or add to a long position up to the configured size; close a short first
    SHORT = 2  # mirror of LONG
    REDUCE = 3  # halve the position, realising PnL on the closed half
    CLOSE = 4  # close the position, realising PnL
    EMERGENCY_FLATTEN = 5  # close at a worse fill and block new entries for a cool-down

    @classmethod
    def parse(cls, value: "int | str | Action") -> "Action":
        """Accept a code (0-5), a name (any case) or an Action; raise ValueError otherwise."""
        if isinstance(value, Action):
            return value
        if isinstance(value, bool):
            raise ValueError(f"not an action: {value!r}")
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"action code must be 0-{len(cls) - 1}, got {value}") from None
        if isinstance(value, str):
            key = value.strip().upper()
            if key.isdigit():
                return cls.parse(int(key))
            try:
                return cls[key]
            except KeyError:
                raise ValueError(f"unknown action {value!r}; expected one of {', '.join(ACTION_NAMES)}") from None
        raise ValueError(f"not an action: {value!r}")


N_ACTIONS = len(Action)
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)
# Stored in every checkpoint; a checkpoint whose enum differs is refused at load time.
ACTION_ENUM_SPEC: dict[str, int] = {a.name: int(a) for a in Action}
ACTION_CHOICES: list[tuple[int, str]] = [(int(a), a.name) for a in Action]
