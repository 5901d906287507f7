"""Hyperparameter checks and the name-or-record factory shared by schedules and optimizers (an
integer hyperparameter is checked by :func:`xpnn.validation.check_integer`, which layers use too)."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

Rule = tuple[str, Callable[[float], bool]]
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: v >= 0.0)
POSITIVE: Rule = ("a finite number > 0", lambda v: v > 0.0)
UNIT: Rule = ("a number in [0, 1)", lambda v: 0.0 <= v < 1.0)
DECAY: Rule = ("a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def number(owner: str, name: str, value: Any, rule: Rule) -> float:
    """``value`` as a Python float (never a NumPy scalar, which would promote float32), checked."""
    text, ok = rule
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not ok(float(value))):
        raise ValueError(f"{owner}: {name} must be {text}, got {value!r}")
    return float(value)


def from_spec(kind: str, base: type, table: Mapping[str, Callable[..., Any]], spec: Any, kwargs: dict[str, Any]) -> Any:
    """Shared by get_schedule/get_optimizer: an instance, a name plus arguments, or a record with "name"."""
    caller = f"get_{kind}"
    if isinstance(spec, base):
        if kwargs:
            raise ValueError(f"{caller}: got an instance {spec!r} and arguments {sorted(kwargs)} to apply to it")
        return spec
    if isinstance(spec, Mapping):
        kwargs = {**spec, **kwargs}
        if "name" not in kwargs:
            raise ValueError(f"{caller}: the record needs a 'name' key, got keys {sorted(kwargs)}")
        spec = kwargs.pop("name")
    key = spec.strip().lower() if isinstance(spec, str) else spec
    if not isinstance(key, str) or key not in table:
        raise ValueError(f"unknown {kind} {spec!r}; known: {', '.join(sorted(table))}")
    return table[key](**kwargs)
