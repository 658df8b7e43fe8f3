"""Argument checks shared by every sampler: one family, one message style.

Each check returns the value (converted) or raises ``ValueError("<name> must be <allowed> (got <value>)")``,
so an error always names the argument and says what is allowed.  The node layer uses the same
family for the inputs it checks itself.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

__all__ = ["check_int", "check_float", "check_choice", "check_bool", "allowed_range"]


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def allowed_range(lo=None, hi=None, lo_open: bool = False) -> str:
    """``'>= 1'``, ``'<= 5'``, ``'between 1 and 5'``, ``'in (0, 1]'`` or ``''``."""
    lo, hi = (None if lo is None else _num(lo)), (None if hi is None else _num(hi))
    if lo is not None and hi is not None:
        return f"in ({lo}, {hi}]" if lo_open else f"between {lo} and {hi}"
    if lo is not None:
        return f"> {lo}" if lo_open else f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


def check_int(name: str, value: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An integer (not a bool) in [lo, hi]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = allowed_range(lo, hi)
        raise ValueError(f"{name} must be an integer{' ' + rng if rng else ''} (got {value!r})")
    return int(value)


def check_float(name: str, value: Any, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> float:
    """A finite real number (not a bool) in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    rng = allowed_range(lo, hi, lo_open)
    what = f"a finite number{' ' + rng if rng else ''}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {what} (got {value!r})")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad = bad or (v <= lo if lo_open else v < lo)
    if hi is not None:
        bad = bad or v > hi
    if bad:
        raise ValueError(f"{name} must be {what} (got {value!r})")
    return v


def check_choice(name: str, value: Any, options: Iterable) -> Any:
    """One of ``options`` (the message lists at most 12 of them)."""
    options = list(options)
    if not any(value == o and type(value) is type(o) for o in options):
        shown = ", ".join(repr(o) for o in options[:12]) + (", ..." if len(options) > 12 else "")
        raise ValueError(f"{name} must be one of {shown} (got {value!r})")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False (got {value!r})")
    return value
