# guardian.decimal_text: what counts as a number in text that input controls.
from __future__ import annotations

import pytest

from guardian.decimal_text import short_decimal


@pytest.mark.parametrize(
    ("text", "max_digits", "expected"),
    [
        ("0", 5, 0),
        ("65535", 5, 65535),
        ("123456", 5, None),  # longer than allowed
        ("", 5, None),
        ("²", 5, None),  # isdigit() but int() refuses it
        ("١٢", 5, None),  # Arabic-Indic digits: int() would take them, we do not
        ("-1", 5, None),
        (" 1", 5, None),
        ("1_000", 9, None),  # int() accepts underscores
        ("9" * 5000, 10, None),  # beyond int()'s limit on long strings: no exception
    ],
)
def test_only_short_ascii_digit_runs_are_numbers(
    text: str, max_digits: int, expected: int | None
) -> None:
    assert short_decimal(text, max_digits) == expected
