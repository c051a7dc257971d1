"""normalise_for_scoring: punctuation, hyphens, and numbers written as digits or words score alike."""

from __future__ import annotations

import pytest

from streaming_model.textnorm import digits_to_words, normalise_for_scoring, number_to_words, ordinal_words

CASES = [
    ("Hello, World!", "hello world"),
    ("  many   spaces\there ", "many spaces here"),
    ("Don't “stop” — rock 'n' roll!", "don't stop rock n roll"),
    ("the students' books", "the students books"),
    ("Twenty-one", "twenty one"),
    ("café naïve", "cafe naive"),
    ("7", "seven"),
    ("0", "zero"),
    ("42", "forty two"),
    ("1995", "one thousand nine hundred ninety five"),
    ("0142", "zero one four two"),
    ("05", "zero five"),
    ("12345678", "one two three four five six seven eight"),
    ("1,250,000", "one million two hundred fifty thousand"),
    ("1,000,000,000,000", "one trillion"),
    ("3.25", "three point two five"),
    (".5", "point five"),
    ("1st 2nd 3rd 23rd 12th 40th 100th", "first second third twenty third twelfth fortieth one hundredth"),
    ("the 1990s and the '80s", "the one thousand nine hundred nineties and the eighties"),
    ("$12.50", "twelve dollars fifty cents"),
    ("$1", "one dollar"),
    ("$0.05", "five cents"),
    ("$0.01", "one cent"),
    ("$12.00", "twelve dollars"),
    ("$1,250.50", "one thousand two hundred fifty dollars fifty cents"),
    ("$2.5 million", "two point five million dollars"),
    ("£3.01", "three pounds one penny"),
    ("€20", "twenty euros"),
    ("45%", "forty five percent"),
    ("2.5 %", "two point five percent"),
    ("ten per cent", "ten percent"),
    ("3:30", "three thirty"),
    ("9:05", "nine oh five"),
    ("4:00", "four o'clock"),
    ("3:30 p.m.", "three thirty pm"),
    ("at 9:05am", "at nine oh five am"),
    ("4g mp3", "four g mp three"),
    ("call 555-1234", "call five hundred fifty five one thousand two hundred thirty four"),
    ("one hundred and five", "one hundred five"),
    ("bread and butter", "bread and butter"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalise_for_scoring(text: str, expected: str) -> None:
    assert normalise_for_scoring(text) == expected


@pytest.mark.parametrize(("digits", "words"), [
    ("I owe $1,250.50 on the 3rd", "i owe one thousand two hundred fifty dollars fifty cents on the third"),
    ("Meet me at 3:30 on May 21st.", "meet me at three thirty on may twenty-first"),
    ("It rose 12% to $40", "it rose twelve percent to forty dollars"),
    ("PIN 0142", "pin zero one four two"),
    ("one hundred and five", "105"),
])
def test_digits_and_words_are_equivalent(digits: str, words: str) -> None:
    assert normalise_for_scoring(digits) == normalise_for_scoring(words)


def test_year_readings_differ_as_documented() -> None:
    assert normalise_for_scoring("1995") != normalise_for_scoring("nineteen ninety five")


@pytest.mark.parametrize("text", ["a1b2c3 4,5 6.7.8 $ % 10:61 99:99:99 1,2345 ²", "x" * 3 + "0" * 40])
def test_output_has_no_digits_or_punctuation(text: str) -> None:
    out = normalise_for_scoring(text)
    assert all(c.isalpha() or c in " '" for c in out), out
    assert normalise_for_scoring(out) == out  # idempotent


@pytest.mark.parametrize(("n", "words"), [
    (0, "zero"), (10, "ten"), (19, "nineteen"), (20, "twenty"), (99, "ninety nine"), (100, "one hundred"),
    (101, "one hundred one"), (1000, "one thousand"), (1001, "one thousand one"),
    (1_000_000, "one million"), (2_000_017, "two million seventeen"),
    (1_234_567_890, "one billion two hundred thirty four million five hundred sixty seven thousand "
                    "eight hundred ninety"),
])
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_number_to_words_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="takes 0"):
        number_to_words(-1)
    with pytest.raises(ValueError):
        number_to_words(10**15)


def test_ordinals_and_digits() -> None:
    assert ordinal_words(1) == "first"
    assert ordinal_words(20) == "twentieth"
    assert ordinal_words(1_000_000) == "one millionth"
    assert digits_to_words("907") == "nine zero seven"
