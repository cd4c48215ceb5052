"""Argument checks shared by public functions: each error names the argument and what was expected."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def check_int(value, name: str, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return ``value`` as ``int`` or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.")
    if min_value is not None and value < min_value:
        raise ValueError(f"`{name}` must be >= {min_value}, got {value}.")
    if max_value is not None and value > max_value:
        raise ValueError(f"`{name}` must be <= {max_value}, got {value}.")
    return int(value)


def check_float(
    value,
    name: str,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    strict_min: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` in range or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` must be finite, got {value}.")
    if min_value is not None and (value <= min_value if strict_min else value < min_value):
        raise ValueError(f"`{name}` must be {'>' if strict_min else '>='} {min_value}, got {value}.")
    if max_value is not None and value > max_value:
        raise ValueError(f"`{name}` must be <= {max_value}, got {value}.")
    return value


MPP_RANGE = (0.01, 50.0)
"""Plausible µm per pixel of a microscope image (from a 0.01 µm/px super-resolution scan to a 50 µm/px
thumbnail); outside it a value is a unit slip (nm, m, dpi) or a software default, and is refused."""


def check_mpp(value, name: str) -> float:
    """A pixel size in µm per pixel within :data:`MPP_RANGE`, or an error naming ``name`` and the range."""
    value = check_float(value, name, min_value=0, strict_min=True)
    lo, hi = MPP_RANGE
    if not lo <= value <= hi:
        raise ValueError(
            f"`{name}` must be a pixel size in µm per pixel between {lo} and {hi}, got {value:g} "
            "(a 40x scan is about 0.25, 20x about 0.5; was it given in nm, m or dpi?)."
        )
    return value


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices`` or raise naming ``name``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def check_name(value, name: str) -> str:
    """Check an element-name prefix against spatialdata's rules (``[A-Za-z0-9_.-]``, no leading ``__``)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
    if value.startswith("__") or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in value):
        raise ValueError(
            f"`{name}` may only contain letters, digits, '_', '.', '-' and must not start with '__', got {value!r}."
        )
    return value


def check_names(value, name: str, *, unique: bool = True) -> list[str]:
    """A list of names from a string (one name), a list, tuple, array or index; a clear error naming ``name``.

    A single string is one name, never its characters; duplicates are refused (``unique=True``), naming a few.
    """
    if isinstance(value, str):
        return [value]
    try:
        names = [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    except TypeError:
        raise TypeError(f"`{name}` must be a name or a list of names, got {type(value).__name__}.") from None
    if unique and len(set(names)) != len(names):
        seen, dup = set(), []
        for n in names:
            if n in seen and n not in dup:
                dup.append(n)
            seen.add(n)
        raise ValueError(f"`{name}` lists names more than once: {dup[:5]}.")
    return names
