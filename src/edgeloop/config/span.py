"""Time-or-readings spans of a stream (``model.consolidate_after``, ``model.refresh_every``)."""

from __future__ import annotations


class Span:
    """A stretch of a stream: a time (``90s``, ``30m``, ``12h``, ``3d``) or a count of readings (``2000``).

    Time spans turn into readings with a device's observed sampling interval, so one setting means
    the same thing at one reading every 10 s or every hour. ``0`` means off.

    >>> Span.parse("12h").readings(600.0), Span.parse("2000").readings(600.0), Span.parse("0").off
    (72, 2000, True)
    >>> Span.parse("12h").duration(600.0), Span.parse("2000").duration(600.0)
    (43200.0, 1200000.0)
    >>> Span.parse("soon")
    Traceback (most recent call last):
    ...
    ValueError: span 'soon': expected readings (2000) or a time such as 90s, 30m, 12h, 3d
    """

    __slots__ = ("amount", "seconds")
    _UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

    def __init__(self, amount: float, seconds: bool) -> None:
        self.amount = amount
        self.seconds = seconds

    @classmethod
    def parse(cls, text: str | int | float) -> Span:
        raw = str(text).strip().lower()
        unit = raw[-1:] if raw[-1:] in cls._UNITS else ""
        try:
            amount = float(raw[:-1] if unit else raw)
        except ValueError:
            raise ValueError(
                f"span {text!r}: expected readings (2000) or a time such as 90s, 30m, 12h, 3d"
            ) from None
        if not amount >= 0 or amount == float("inf"):
            raise ValueError(f"span {text!r} must be a finite number >= 0")
        return cls(amount * cls._UNITS[unit], True) if unit else cls(amount, False)

    @property
    def off(self) -> bool:
        return self.amount == 0

    def duration(self, interval: float | None) -> float:
        """This span in seconds at ``interval`` seconds a reading (None: not yet known, taken as 60 s)."""
        if self.seconds:
            return self.amount
        return self.amount * (interval if interval and interval > 0 else 60.0)

    def readings(self, interval: float | None) -> int:
        """This span in readings at ``interval`` seconds a reading (None: not yet known, taken as 60 s)."""
        if not self.seconds:
            return int(self.amount)
        return round(self.amount / (interval if interval and interval > 0 else 60.0))
