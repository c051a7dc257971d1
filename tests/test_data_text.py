import re

import numpy as np
import pytest

from streaming_model.data.text import (
    HOTWORDS,
    TEMPLATES,
    TextSampler,
    digits_to_words,
    fill_template,
    fillers,
    general_sentences,
    normalize_text,
    number_to_words,
    ordinal_to_words,
    templates,
    year_to_words,
)

_NORMALISED = re.compile(r"^[a-z']+( [a-z']+)*$")


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (105, "one hundred five"),
        (2405, "two thousand four hundred five"),
        (1_000_000, "one million"),
        (12_345_678, "twelve million three hundred forty five thousand six hundred seventy eight"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_ordinals_years_digits() -> None:
    assert ordinal_to_words(1) == "first"
    assert ordinal_to_words(23) == "twenty third"
    assert ordinal_to_words(40) == "fortieth"
    assert year_to_words(1987) == "nineteen eighty seven"
    assert year_to_words(2005) == "two thousand five"
    assert year_to_words(1905) == "nineteen oh five"
    assert digits_to_words("4075") == "four zero seven five"


def test_normalize_writes_numbers_as_words() -> None:
    assert (
        normalize_text("I paid $15 at 7:30, 100% SURE!")
        == "i paid fifteen at seven thirty one hundred percent sure"
    )
    assert normalize_text("Rock 'n' roll -- it's 'quoted'") == "rock n roll it's quoted"


def test_sampler_is_deterministic_and_normalised() -> None:
    sampler = TextSampler("train")
    a = [sampler.sample(np.random.default_rng([5, i])) for i in range(300)]
    b = [sampler.sample(np.random.default_rng([5, i])) for i in range(300)]
    assert a == b
    for text, _ in a:
        assert _NORMALISED.match(text), text
        assert not re.search(r"\d", text)
    assert {subset for _, subset in a} >= {
        "banking",
        "insurance",
        "real_estate",
        "car_sales",
        "telecom",
        "general",
    }


def _template_pattern(template: str) -> re.Pattern[str] | None:
    """A regex for a template's output (slots match anything); None if it has fewer than 3 fixed words."""
    parts = [normalize_text(p) for p in re.split(r"\{[a-z_0-9]+\}", template)]
    if sum(len(p.split()) for p in parts) < 3:
        return None
    return re.compile("(?:^| )" + " ?.+? ?".join(re.escape(p) for p in parts) + "(?: |$)")


def test_held_out_templates_never_in_train() -> None:
    train, dev = templates("train"), templates("dev")
    assert train and dev and not set(train) & set(dev)
    assert len(train) + len(dev) == sum(len(v) for v in TEMPLATES.values())
    patterns = [(t.text, p) for t in dev if (p := _template_pattern(t.text)) is not None]
    assert len(patterns) >= 10
    sampler = TextSampler("train", general_fraction=0.0)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        text, _ = sampler.sample(rng)
        for template, pattern in patterns:
            assert not pattern.search(text), (template, text)
    assert not set(general_sentences("train")) & set(general_sentences("dev"))


def test_held_out_fillers_never_in_train() -> None:
    held = set(fillers("dev")) - set(fillers("train"))
    sampler = TextSampler("train", general_fraction=0.0)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        words = f" {sampler.sample(rng)[0]} "
        assert not any(f" {h} " in words and words.startswith(f" {h} ") for h in held)


def test_fill_template_has_no_leftover_slots() -> None:
    rng = np.random.default_rng(2)
    for t in templates("train") + templates("dev"):
        text = fill_template(t.text, rng, "train", "banking" if t.domain == "common" else t.domain)
        assert _NORMALISED.match(text), (t.text, text)


def test_hotwords_list() -> None:
    assert len(HOTWORDS) >= 100
    assert all(_NORMALISED.match(h) for h in HOTWORDS)
