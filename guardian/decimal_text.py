# Decimal numbers in text that hostile or sloppy input controls (journal fields, knockd.conf
# values): only short ASCII digit runs are numbers. str.isdigit() alone also passes "²" (which
# int() refuses) and 5,000 digits (beyond int()'s limit on long strings), and either would raise
# where the caller expects a clean "not a number".
from __future__ import annotations


def short_decimal(text: str, max_digits: int) -> int | None:
    """1 to max_digits ASCII decimal digits as a number; anything else None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
