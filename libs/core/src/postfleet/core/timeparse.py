"""Postfix time values ("300s", "5m", "1h", "5d", "1w"; a bare number is
seconds), as used by maximal_queue_lifetime, queue_run_delay, smtpd_timeout…"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: object, default_unit: str = "s") -> float:
    if isinstance(value, int | float):
        return float(value) * _UNITS[default_unit]
    text = str(value).strip().lower()
    if not text:
        raise ValueError("empty time value")
    unit = text[-1] if text[-1] in _UNITS else default_unit
    number = text[:-1] if text[-1] in _UNITS else text
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"bad time value {value!r}: use e.g. 300s, 5m, 1h, 5d") from None


def _days(value: object) -> float:
    # maximal_queue_lifetime / bounce_queue_lifetime: a bare number means days.
    return parse_time(value, "d")


def _hours(value: object) -> float:
    # delay_warning_time: a bare number means hours.
    return parse_time(value, "h")


Seconds = Annotated[float, BeforeValidator(parse_time)]
Hours = Annotated[float, BeforeValidator(_hours)]
Days = Annotated[float, BeforeValidator(_days)]


def format_time(seconds: float) -> str:
    """A time value in the largest unit that holds it whole: 432000 -> "5d"."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def is_time(metadata: list[object]) -> bool:
    """Whether a field's annotations make it a Postfix time value."""
    return any(getattr(m, "func", None) in (parse_time, _days) for m in metadata)
