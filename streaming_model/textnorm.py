"""Text normalisation for scoring (``xlgate eval``): the same function is applied to references and hypotheses.

:func:`normalise_for_scoring` lowercases, folds accents, strips punctuation (apostrophes inside words
stay: "don't", "o'clock"), collapses hyphens and dashes into spaces ("twenty-one" -> "twenty one") and
spells numbers out in English words, so a reference written with digits and a hypothesis written with
words (or the other way round) score alike:

==========================  ============================================================
written                     spoken form produced
==========================  ============================================================
``7`` ``42`` ``1995``       cardinal words up to 4 digits: "one thousand nine hundred ninety five"
``1,250,000``               cardinal words (comma-grouped numbers are quantities), to trillions
``0142`` ``12345678``       digit by digit: multi-digit groups with a leading zero, or longer than 4 digits
``3.25`` ``.5``             "three point two five", "point five"
``1st`` ``23rd`` ``100th``  "first", "twenty third", "one hundredth"
``1990s`` ``'90s``          "one thousand nine hundred nineties", "nineties"
``$12.50`` ``$1`` ``$0.05``  "twelve dollars fifty cents", "one dollar", "five cents" (also £ and €)
``$2.5 million``            "two point five million dollars"
``45%`` ``2.5 %``           "forty five percent", "two point five percent" ("per cent" -> "percent")
``3:30`` ``9:05`` ``4:00``  "three thirty", "nine oh five", "four o'clock"; ``3:30 p.m.`` -> "three thirty pm"
==========================  ============================================================

Known sources of mismatch (both sides are normalised, but no rule can guess how a number was spoken):

* Years: "1995" becomes "one thousand nine hundred ninety five", while people say "nineteen ninety five";
  a hypothesis in words keeps the year reading and does not match a reference in digits.
* Phone and account numbers split into groups of up to 4 digits ("555 1234") are read as cardinals
  ("five hundred fifty five ..."), not digit by digit as they are spoken.
* "a hundred" / "one hundred", "oh" for zero, and fractions ("1/2") are not unified. A British "and"
  inside a number ("one hundred and five") is dropped, so it matches "one hundred five".
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["digits_to_words", "normalise_for_scoring", "number_to_words", "ordinal_words"]

_ONES: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen")
_TENS: Final = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES: Final = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_MAX_CARDINAL: Final = 10**15 - 1
_ORDINAL_IRREGULAR: Final = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                             "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_CURRENCIES: Final = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
                      "£": ("pound", "pounds", "penny", "pence")}


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """A cardinal in American English words without "and": 1250 -> "one thousand two hundred fifty".

    Raises:
        ValueError: ``n`` is negative or above 999 trillion.
    """
    if n < 0 or n > _MAX_CARDINAL:
        raise ValueError(f"number_to_words takes 0 .. {_MAX_CARDINAL}, got {n}")
    if n < 1000:
        return " ".join(_below_thousand(n))
    words: list[str] = []
    for scale, name in _SCALES:
        count, n = divmod(n, scale)
        if count:
            words += [*_below_thousand(count), name]
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def ordinal_words(n: int) -> str:
    """An ordinal in words: 1 -> "first", 23 -> "twenty third", 100 -> "one hundredth"."""
    *head, last = number_to_words(n).split()
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def digits_to_words(digits: str) -> str:
    """Each digit in words: "0142" -> "zero one four two"."""
    return " ".join(_ONES[int(d)] for d in digits)


def _plural(words: str) -> str:
    """"nineteen ninety" -> "nineteen nineties" (decades: the 1990s), "six" -> "sixes"."""
    *head, last = words.split()
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith(("x", "s")):
        last += "es"
    else:
        last += "s"
    return " ".join([*head, last])


def _integer(digits: str) -> str:
    """A bare digit group as it is usually read: cardinal up to 4 digits, else (or with a leading zero)
    digit by digit."""
    if len(digits) > 4 or (len(digits) > 1 and digits[0] == "0"):
        return digits_to_words(digits)
    return number_to_words(int(digits))


def _quantity(digits: str) -> str:
    """A number known to be a quantity (money, percent, comma-grouped): cardinal whatever its length."""
    digits = digits.replace(",", "")
    value = int(digits)
    return number_to_words(value) if value <= _MAX_CARDINAL else digits_to_words(digits)


def _decimal(integer: str, fraction: str) -> str:
    head = _quantity(integer) + " " if integer else ""
    return f"{head}point {digits_to_words(fraction)}"


def _pad(words: str) -> str:
    # Spaces around every replacement keep it apart from letters glued to the digits ("4g" -> "four g").
    return f" {words} "


_GROUPED: Final = r"\d{1,3}(?:,\d{3})+(?!\d)"
_NUMBER: Final = rf"(?:{_GROUPED}|\d+)"

_MONEY_RE: Final = re.compile(
    rf"([$€£])\s?({_NUMBER})(?:\.(\d+))?(?:\s?(thousand|million|billion|trillion)\b)?")
_PERCENT_RE: Final = re.compile(rf"({_NUMBER})(?:\.(\d+))?\s?%")
_TIME_RE: Final = re.compile(r"(?<![\d:])(\d{1,2}):([0-5]\d)(?![\d:])(?:\s?([ap])\.?\s?m\b\.?)?")
_ORDINAL_RE: Final = re.compile(rf"({_NUMBER})(st|nd|rd|th)\b")
_DECADE_RE: Final = re.compile(r"'?(\d+)'?s\b")
_DECIMAL_RE: Final = re.compile(rf"({_NUMBER})?\.(\d+)")
_GROUPED_RE: Final = re.compile(_GROUPED)
_DIGITS_RE: Final = re.compile(r"\d+")
_MERIDIEM_RE: Final = re.compile(r"\b([ap])\.\s?m\b\.?")
_PER_CENT_RE: Final = re.compile(r"\bper cent\b")
_NUMBER_AND_RE: Final = re.compile(
    r"\b(hundred|thousand|million|billion|trillion) and (?=(?:" + "|".join(_ONES[1:] + _TENS[2:]) + r")\b)")
_DASHES_RE: Final = re.compile(r"[-‐‑‒–—―−]")
_NOT_WORD_RE: Final = re.compile(r"[^\w' ]|_")
_LOOSE_APOSTROPHE_RE: Final = re.compile(r"(?<!\w)'|'(?!\w)")
_APOSTROPHES: Final = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    whole, fraction, scale = m.group(2), m.group(3), m.group(4)
    if scale:  # "$2.5 million": a quantity of the unit
        amount = _decimal(whole, fraction) if fraction else _quantity(whole)
        return _pad(f"{amount} {scale} {many}")
    if fraction is not None and len(fraction) != 2:  # "$1.5": read as a decimal
        return _pad(f"{_decimal(whole, fraction)} {many}")
    units = int(whole.replace(",", ""))
    cents = int(fraction) if fraction else 0
    parts = []
    if units or not cents:
        parts.append(f"{_quantity(whole)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{number_to_words(cents)} {sub_one if cents == 1 else sub_many}")
    return _pad(" ".join(parts))


def _percent(m: re.Match[str]) -> str:
    amount = _decimal(m.group(1), m.group(2)) if m.group(2) else _quantity(m.group(1))
    return _pad(f"{amount} percent")


def _time(m: re.Match[str]) -> str:
    hour, minute, meridiem = int(m.group(1)), int(m.group(2)), m.group(3)
    words = [number_to_words(hour)]
    if minute == 0:
        if not meridiem:
            words.append("o'clock")
    elif minute < 10:
        words += ["oh", number_to_words(minute)]
    else:
        words.append(number_to_words(minute))
    if meridiem:
        words.append(meridiem + "m")
    return _pad(" ".join(words))


def _ordinal(m: re.Match[str]) -> str:
    value = int(m.group(1).replace(",", ""))
    return _pad(ordinal_words(value)) if value <= _MAX_CARDINAL else m.group(0)


def _decade(m: re.Match[str]) -> str:
    return _pad(_plural(_integer(m.group(1))))


def _decimal_match(m: re.Match[str]) -> str:
    return _pad(_decimal(m.group(1) or "", m.group(2)))


def normalise_for_scoring(text: str) -> str:
    """The form in which references and hypotheses are compared (see the module docstring).

    Args:
        text: Any transcript: reference or hypothesis, digits or words, with or without punctuation.

    Returns:
        Lowercase words separated by single spaces; no digits remain (numbers are spelled out).
    """
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _DASHES_RE.sub(" ", text)
    text = _MONEY_RE.sub(_money, text)
    text = _PERCENT_RE.sub(_percent, text)
    text = _TIME_RE.sub(_time, text)
    text = _MERIDIEM_RE.sub(lambda m: m.group(1) + "m", text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    text = _DECADE_RE.sub(_decade, text)
    text = _DECIMAL_RE.sub(_decimal_match, text)
    text = _GROUPED_RE.sub(lambda m: _pad(_quantity(m.group(0))), text)
    text = _DIGITS_RE.sub(lambda m: _pad(_integer(m.group(0))), text)
    text = _NOT_WORD_RE.sub(" ", text)
    text = _LOOSE_APOSTROPHE_RE.sub(" ", text)
    text = " ".join(text.split())
    text = _PER_CENT_RE.sub("percent", text)
    return _NUMBER_AND_RE.sub(r"\1 ", text)
