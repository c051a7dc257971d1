"""Texts to synthesise: contact-center utterances from templates, plus general English for breadth.

Every text is produced already normalised (lowercase ASCII letters, apostrophes and single spaces), with
numbers written as words, so the string handed to the synthesiser is the reference transcript.

Held-out split (the dev set): whole templates, some filler words and some names are reserved for dev by
a stable hash of their text, so ``TextSampler("train", ...)`` can never produce them. General English
sentences come from Debian's ``fortunes`` package (its ``.dat``-less plain files) and names, streets and
towns from Debian's ``wamerican`` word list; both are installed, nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDLIST = Path("/usr/share/dict/american-english")
# fortune files with plain prose; the offensive, ASCII-art and code-heavy ones are left out.
FORTUNE_FILES = (
    "fortunes",
    "literature",
    "people",
    "wisdom",
    "food",
    "education",
    "humorists",
    "science",
    "work",
    "platitudes",
    "men-women",
    "love",
    "politics",
    "pets",
    "miscellaneous",
    "sports",
    "kids",
    "law",
    "medicine",
    "news",
    "riddles",
    "magic",
    "paradoxum",
    "goedel",
)
DOMAINS = ("banking", "insurance", "real_estate", "car_sales", "telecom")
SPLITS = ("train", "dev")
_DEV_PERCENT = 15


class TextDataError(RuntimeError):
    """An installed text resource (fortunes, wamerican) is missing."""


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def is_dev_item(text: str, percent: int = _DEV_PERCENT) -> bool:
    """Whether a template / word / sentence is held out for the dev split."""
    return stable_hash(text) % 100 < percent


# --------------------------------------------------------------------------------------------------
# Numbers as words
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def number_to_words(n: int) -> str:
    """Cardinal number in words: 2405 -> 'two thousand four hundred five'.

    Raises:
        ValueError: for negative numbers or numbers of a trillion and above.
    """
    if n < 0 or n >= 10**12:
        raise ValueError(f"number_to_words supports 0 <= n < 10**12, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return (
                number_to_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
            )
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    """Ordinal in words: 23 -> 'twenty third'."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_to_words(year: int) -> str:
    """A year as people say it: 1987 -> 'nineteen eighty seven', 2005 -> 'two thousand five'."""
    if 2000 <= year < 2010:
        return number_to_words(year)
    hi, lo = divmod(year, 100)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    return number_to_words(hi) + " " + (("oh " + _ONES[lo]) if lo < 10 else number_to_words(lo))


def digits_to_words(digits: str, rng: np.random.Generator | None = None) -> str:
    """Digit string read digit by digit; with an rng, zero is sometimes 'oh' and pairs 'double x'."""
    out: list[str] = []
    i = 0
    while i < len(digits):
        d = int(digits[i])
        if rng is not None and i + 1 < len(digits) and digits[i + 1] == digits[i] and rng.random() < 0.4:
            out.append("double " + ("oh" if d == 0 and rng.random() < 0.5 else _ONES[d]))
            i += 2
            continue
        out.append("oh" if d == 0 and rng is not None and rng.random() < 0.4 else _ONES[d])
        i += 1
    return " ".join(out)


_NUMBER = re.compile(r"\d+")


def normalize_text(text: str) -> str:
    """Reference normalisation: lowercase; digits to words; only letters, apostrophes and spaces."""
    text = text.lower().replace("&", " and ").replace("%", " percent ").replace("’", "'")

    def spell(m: re.Match[str]) -> str:
        s = m.group(0)
        return (
            " "
            + (number_to_words(int(s)) if len(s) <= 9 and not s.startswith("0") else digits_to_words(s))
            + " "
        )

    text = _NUMBER.sub(spell, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# Slot values
_FIRST_NAMES = """james mary robert patricia john jennifer michael linda david elizabeth william barbara richard
susan joseph jessica thomas sarah charles karen christopher lisa daniel nancy matthew betty anthony sandra mark
margaret donald ashley steven kimberly paul emily andrew donna joshua michelle kenneth carol kevin amanda brian
melissa george deborah timothy stephanie ronald rebecca jason sharon edward laura jeffrey cynthia ryan kathleen
jacob amy gary angela nicholas shirley eric anna jonathan brenda stephen pamela larry emma justin nicole scott
helen brandon samantha benjamin katherine samuel christine gregory debra alexander rachel frank carolyn patrick
janet raymond catherine jack maria dennis heather jerry diane tyler ruth aaron julie jose olivia adam joyce henry
virginia nathan victoria douglas kelly zachary lauren peter christina kyle joan noah evelyn ethan judith jeremy
megan walter andrea christian cheryl keith hannah roger jacqueline terry martha austin gloria sean teresa gerald
ann carl sara harold madison dylan frances arthur kathryn lawrence janice jordan jean jesse abigail bryan alice
billy julia bruce judy gabriel sophia joe grace logan denise albert amber willie doris alan marilyn eugene danielle
russell beverly vincent isabella bobby theresa philip diana johnny natalie louis brittany wayne charlotte priya
raj wei mohammed fatima carlos lucia ahmed yuki kenji sofia mateo chloe liam aisha omar ivan olga pierre""".split()


@cache
def _wordlist() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(proper nouns, common words) from wamerican, lowercase, letters only."""
    if not WORDLIST.exists():
        raise TextDataError(f"{WORDLIST} is missing: apt-get install wamerican")
    proper, common = set(), set()
    for line in WORDLIST.read_text(encoding="utf-8", errors="ignore").split():
        if "'" in line or not line.isascii() or not line.isalpha() or len(line) < 3:
            continue
        (proper if line[0].isupper() else common).add(line.lower())
    return tuple(sorted(proper)), tuple(sorted(common - proper))


@cache
def _pool(name: str, split: str) -> tuple[str, ...]:
    """A slot pool for one split; dev may use everything, train never sees dev-held items."""
    proper, _ = _wordlist()
    hotword_tokens = _hotword_tokens()
    if name == "surname":
        items = tuple(w for w in proper if len(w) >= 4 and w not in hotword_tokens)
    elif name == "street":
        items = tuple(w for w in proper if 4 <= len(w) <= 9 and w not in hotword_tokens)
    elif name == "first":
        items = tuple(_FIRST_NAMES)
    else:
        raise KeyError(name)
    if split == "train":
        return tuple(w for w in items if not is_dev_item("slot:" + w))
    return items


_STREET_TYPES = "street avenue road lane drive court boulevard way place terrace circle parkway".split()
_DIRECTIONS = ("north", "south", "east", "west", "")
_STATES = """alabama arizona california colorado connecticut florida georgia illinois indiana iowa kansas kentucky
louisiana maine maryland massachusetts michigan minnesota missouri nevada ohio oklahoma oregon pennsylvania
tennessee texas utah vermont virginia washington wisconsin""".split()
_MONTHS = "january february march april may june july august september october november december".split()
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_BANKS = (
    "first harbor bank",
    "northfield credit union",
    "summit savings",
    "bluewater bank",
    "cedar trust",
    "granite federal",
    "meridian bank",
    "oakline financial",
)
_INSURERS = (
    "safeguard mutual",
    "evergreen insurance",
    "liberty shield",
    "harborview assurance",
    "keystone life",
    "pioneer casualty",
)
_TELCOS = ("skylink mobile", "nova telecom", "brightwave", "horizon wireless", "pulse connect", "fibernet")
_DEALERS = (
    "riverside motors",
    "autohaus central",
    "sunrise auto group",
    "metro ford",
    "valley honda",
    "coastline toyota",
)
_AGENCIES = (
    "keller properties",
    "greenway realty",
    "cornerstone homes",
    "blue door real estate",
    "hillside realty",
)
_CAR_MODELS = (
    "civic",
    "corolla",
    "camry",
    "accord",
    "mustang",
    "explorer",
    "outback",
    "forester",
    "rav four",
    "cr v",
    "f one fifty",
    "model three",
    "silverado",
    "wrangler",
    "tacoma",
    "altima",
    "sentra",
    "elantra",
    "sonata",
    "tucson",
    "highlander",
    "pilot",
    "odyssey",
    "sienna",
    "jetta",
    "golf",
)
_CAR_MAKES = (
    "toyota",
    "honda",
    "ford",
    "chevrolet",
    "nissan",
    "hyundai",
    "kia",
    "subaru",
    "mazda",
    "volkswagen",
    "jeep",
    "tesla",
    "bmw",
    "audi",
)
_PLANS = (
    "unlimited plus",
    "basic talk and text",
    "family share",
    "premium unlimited",
    "prepaid starter",
    "business pro",
    "five gig data plan",
    "international roaming pack",
    "fiber one gig",
    "home internet essentials",
    "streaming bundle",
    "senior saver",
)
_BANK_PRODUCTS = (
    "checking account",
    "savings account",
    "credit card",
    "debit card",
    "mortgage",
    "home equity line",
    "personal loan",
    "auto loan",
    "certificate of deposit",
    "money market account",
    "overdraft protection",
    "travel rewards card",
    "cash back card",
    "student loan",
    "wire transfer",
    "direct deposit",
)
_INSURANCE_PRODUCTS = (
    "auto policy",
    "home policy",
    "renters insurance",
    "life insurance",
    "term life policy",
    "umbrella policy",
    "flood coverage",
    "comprehensive coverage",
    "collision coverage",
    "liability coverage",
    "roadside assistance",
    "dental plan",
    "health plan",
    "pet insurance",
)
_PROPERTY_TYPES = (
    "condo",
    "townhouse",
    "two bedroom apartment",
    "three bedroom house",
    "studio",
    "duplex",
    "single family home",
    "ranch house",
    "loft",
    "four bedroom colonial",
)
_PHONE_FEATURES = (
    "voicemail",
    "call forwarding",
    "hotspot",
    "roaming",
    "data",
    "caller id",
    "eSIM",
    "wifi calling",
)
_FILLERS_ALL = (
    "um",
    "uh",
    "you know",
    "i mean",
    "well",
    "so",
    "okay",
    "like",
    "actually",
    "basically",
    "right",
    "alright",
    "erm",
    "hmm",
    "you see",
    "kind of",
    "honestly",
    "listen",
    "look",
    "oh",
)
_FILLERS_DEV = frozenset({"erm", "hmm", "you see", "kind of"})


def fillers(split: str) -> tuple[str, ...]:
    """Filler words; a few are held out for dev and never appear in train texts."""
    return tuple(f for f in _FILLERS_ALL if split == "dev" or f not in _FILLERS_DEV)


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _amount(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.4:
        dollars = int(rng.integers(1, 1000))
    elif kind < 0.8:
        dollars = int(rng.integers(1000, 100_000))
    else:
        dollars = int(rng.integers(100_000, 2_000_000)) // 1000 * 1000
    cents = int(rng.integers(0, 100)) if rng.random() < 0.4 else 0
    words = number_to_words(dollars) + (" dollar" if dollars == 1 else " dollars")
    if cents:
        if rng.random() < 0.5:
            words += " and " + number_to_words(cents) + (" cent" if cents == 1 else " cents")
        else:
            words = number_to_words(dollars) + " " + number_to_words(cents)
    return words


def _date(rng: np.random.Generator) -> str:
    month, day = _pick(rng, _MONTHS), int(rng.integers(1, 29))
    style = rng.random()
    if style < 0.4:
        text = f"{month} {ordinal_to_words(day)}"
    elif style < 0.7:
        text = f"the {ordinal_to_words(day)} of {month}"
    elif style < 0.85:
        text = f"{_pick(rng, _WEEKDAYS)} {month} {ordinal_to_words(day)}"
    else:
        text = f"{month} {number_to_words(day)}"
    if rng.random() < 0.3:
        text += " " + year_to_words(int(rng.integers(1950, 2031)))
    return text


def _time(rng: np.random.Generator) -> str:
    hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 0, 15, 30, 45, int(rng.integers(1, 60))]))
    if minute == 0:
        core = number_to_words(hour) + (" o'clock" if rng.random() < 0.4 else "")
    elif minute < 10:
        core = f"{number_to_words(hour)} oh {number_to_words(minute)}"
    elif minute == 30 and rng.random() < 0.3:
        core = f"half past {number_to_words(hour)}"
    elif minute == 15 and rng.random() < 0.3:
        core = f"quarter past {number_to_words(hour)}"
    else:
        core = f"{number_to_words(hour)} {number_to_words(minute)}"
    suffix = _pick(rng, ("", " a m", " p m", " in the morning", " in the afternoon", " this evening"))
    return core + suffix


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=n))


def _phone(rng: np.random.Generator) -> str:
    return " ".join(digits_to_words(_digits(rng, k), rng) for k in (3, 3, 4))


def _address(rng: np.random.Generator, split: str) -> str:
    number = int(rng.integers(1, 9999))
    spoken = (
        number_to_words(number) if number < 100 or rng.random() < 0.4 else digits_to_words(str(number), rng)
    )
    direction = _pick(rng, _DIRECTIONS)
    street = f"{direction} {_pick(rng, _pool('street', split))} {_pick(rng, _STREET_TYPES)}".strip()
    text = f"{spoken} {street}"
    if rng.random() < 0.3:
        text += f" apartment {number_to_words(int(rng.integers(1, 40)))}"
    if rng.random() < 0.3:
        text += f" {_pick(rng, _pool('street', split))} {_pick(rng, _STATES)}"
    return text


def _name(rng: np.random.Generator, split: str) -> str:
    first, last = _pick(rng, _pool("first", split)), _pick(rng, _pool("surname", split))
    r = rng.random()
    if r < 0.2:
        return first
    if r < 0.35:
        return _pick(rng, ("mister", "missus", "miss", "doctor", "ms")) + " " + last
    return f"{first} {last}"


def _spelled(rng: np.random.Generator, split: str) -> str:
    word = _pick(rng, _pool("surname", split))[:7]
    return " ".join(word)


def _percent(rng: np.random.Generator) -> str:
    whole = int(rng.integers(0, 30))
    if rng.random() < 0.5:
        return f"{number_to_words(whole)} point {_ONES[int(rng.integers(0, 10))]} percent"
    return f"{number_to_words(whole)} percent"


def _duration(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 61))
    unit = _pick(rng, ("day", "week", "month", "year", "minute", "hour"))
    return f"{number_to_words(n)} {unit}" + ("" if n == 1 else "s")


def _slot_values(rng: np.random.Generator, split: str, domain: str) -> dict[str, str]:
    org = {
        "banking": _BANKS,
        "insurance": _INSURERS,
        "telecom": _TELCOS,
        "car_sales": _DEALERS,
        "real_estate": _AGENCIES,
    }[domain]
    return {
        "name": _name(rng, split),
        "agent": _pick(rng, _pool("first", split)),
        "org": _pick(rng, org),
        "amount": _amount(rng),
        "amount2": _amount(rng),
        "date": _date(rng),
        "time": _time(rng),
        "last4": digits_to_words(_digits(rng, 4), rng),
        "account": digits_to_words(_digits(rng, 8), rng),
        "zip": digits_to_words(_digits(rng, 5), rng),
        "phone": _phone(rng),
        "address": _address(rng, split),
        "spelled": _spelled(rng, split),
        "percent": _percent(rng),
        "duration": _duration(rng),
        "number": number_to_words(int(rng.integers(2, 40))),
        "ordinal": ordinal_to_words(int(rng.integers(1, 32))),
        "year": year_to_words(int(rng.integers(1990, 2027))),
        "plan": _pick(rng, _PLANS),
        "bank_product": _pick(rng, _BANK_PRODUCTS),
        "ins_product": _pick(rng, _INSURANCE_PRODUCTS),
        "car": f"{_pick(rng, _CAR_MAKES)} {_pick(rng, _CAR_MODELS)}",
        "property": _pick(rng, _PROPERTY_TYPES),
        "feature": _pick(rng, _PHONE_FEATURES).lower(),
        "weekday": _pick(rng, _WEEKDAYS),
        "state": _pick(rng, _STATES),
        "digit": _ONES[int(rng.integers(0, 10))],
        "street": _pick(rng, _pool("street", split)),
    }


# --------------------------------------------------------------------------------------------------
# Templates. "common" ones are used by every domain.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "common": (
        "thank you for calling {org} my name is {agent} how can i help you today",
        "good morning you've reached {org} this is {agent} speaking",
        "good afternoon thanks for holding how may i help",
        "hi {agent} my name is {name} and i'm calling about my account",
        "can i please have your full name",
        "could you verify your date of birth for me",
        "my date of birth is {date}",
        "it's {name}",
        "sure my name is {name}",
        "can you confirm the last four digits of your social security number",
        "the last four are {last4}",
        "can you spell your last name for me",
        "it's spelled {spelled}",
        "what's the best phone number to reach you",
        "you can reach me at {phone}",
        "my zip code is {zip}",
        "and what's your current address",
        "i live at {address}",
        "i've moved my new address is {address}",
        "let me pull up your account one moment please",
        "thank you for your patience",
        "i'm going to place you on a brief hold",
        "is there anything else i can help you with today",
        "no that's everything thank you so much",
        "you're welcome have a great day",
        "sorry could you repeat that",
        "i didn't quite catch that could you say it again",
        "yes that's correct",
        "no that's not right",
        "can i speak to a supervisor please",
        "i've been on hold for {duration}",
        "this is the {ordinal} time i'm calling about this",
        "how's the weather over there",
        "it's been raining all week here",
        "i'll send you a confirmation email shortly",
        "could you call me back on {weekday} at {time}",
        "i'm not interested thank you",
        "that sounds a bit expensive to be honest",
        "let me think about it and call you back",
        "i need to talk to my wife first",
        "i need to check with my husband before i decide",
        "great so just to confirm that's {date} at {time}",
        "can you hear me okay",
        "sorry you're breaking up a little",
        "i'm calling on behalf of my mother {name}",
        "the reference number is {account}",
        "your case number is {account}",
        "is this a good time to talk",
        "i appreciate your help {agent}",
        "i'm really frustrated with the service",
        "i understand your frustration and i'm going to fix this for you",
        "hello are you still there",
        "perfect i've made a note on your file",
        "have a wonderful weekend",
        "i'm just calling to follow up on my last call from {weekday}",
    ),
    "banking": (
        "i'd like to check the balance on my {bank_product}",
        "your current balance is {amount}",
        "i want to report a lost card",
        "my card was stolen and i need to block it",
        "i see a charge for {amount} that i don't recognize",
        "there's a transaction on {date} for {amount} that i didn't make",
        "the card ending in {last4}",
        "my account number is {account}",
        "i'd like to transfer {amount} to my {bank_product}",
        "can i set up a payment of {amount} on {date}",
        "what's the interest rate on the {bank_product}",
        "the rate is currently {percent}",
        "the annual percentage rate is {percent} for the first {duration}",
        "i want to dispute a charge",
        "why was i charged an overdraft fee of {amount}",
        "i'd like to increase my credit limit to {amount}",
        "when will my new card arrive",
        "your new card should arrive within {duration}",
        "i need to update my pin",
        "can you waive the late fee this time",
        "i want to close my {bank_product}",
        "i'm traveling to {state} next week please add a travel notice",
        "my direct deposit of {amount} hasn't shown up yet",
        "the minimum payment due is {amount} by {date}",
        "i'd like to apply for a {bank_product}",
        "your loan of {amount} was approved at {percent}",
        "the wire of {amount} will be sent today",
        "i was told the refund would be {amount}",
        "please verify the one time passcode we just sent",
        "the code is {last4}",
        "do you have a branch near {street}",
        "your mortgage payment of {amount} is due on the {ordinal}",
        "can i make a payment over the phone",
        "my online banking is locked",
        "i forgot my password and the reset link doesn't work",
    ),
    "insurance": (
        "i'd like to file a claim",
        "i was in a car accident on {date}",
        "someone hit my car in the parking lot",
        "your policy number please",
        "my policy number is {account}",
        "what does my {ins_product} cover",
        "your deductible is {amount}",
        "the premium for your {ins_product} is {amount} a month",
        "i'd like to add my son to my {ins_product}",
        "we had water damage in the basement",
        "a tree fell on our roof during the storm",
        "can i get a quote for {ins_product}",
        "the quote comes to {amount} per year",
        "when does my policy renew",
        "your policy renews on {date}",
        "the adjuster will call you on {weekday} between {time} and {time}",
        "i want to cancel my {ins_product}",
        "why did my premium go up by {percent}",
        "is the rental car covered under my policy",
        "i have a {year} {car}",
        "the repair shop estimated {amount}",
        "your claim number is {account}",
        "has my claim been approved yet",
        "we'll send a check for {amount} within {duration}",
        "do you bundle home and auto",
        "you could save {percent} by bundling",
        "i'd like to change my beneficiary to {name}",
        "the coverage limit is {amount}",
        "is there a waiting period of {duration}",
        "my house is at {address}",
    ),
    "real_estate": (
        "i'm calling about the {property} listed on {street} {_type}",
        "is the {property} at {address} still available",
        "the asking price is {amount}",
        "we'd like to schedule a viewing for {weekday} at {time}",
        "how many bedrooms does it have",
        "it has {number} bedrooms and two bathrooms",
        "what are the property taxes like",
        "the taxes are about {amount} a year",
        "the hoa fee is {amount} a month",
        "we're pre approved for {amount}",
        "can we make an offer of {amount}",
        "the sellers countered at {amount}",
        "closing is scheduled for {date}",
        "is the {property} close to good schools",
        "when was the roof replaced",
        "the house was built in {year}",
        "we're looking for something under {amount}",
        "the rent is {amount} per month with a {duration} lease",
        "is there parking included",
        "are pets allowed in the building",
        "the open house is on {weekday} from {time} to {time}",
        "i'd like to list my {property}",
        "what's the square footage",
        "it's about {number} hundred square feet",
        "the inspection found some issues with the plumbing",
        "the earnest money deposit is {amount}",
        "your mortgage rate is locked at {percent}",
    ),
    "car_sales": (
        "i saw the {year} {car} on your website",
        "is the {car} still on the lot",
        "what's the best price you can do on the {car}",
        "the sticker price is {amount}",
        "we can offer {amount} for your trade in",
        "i'd like to schedule a test drive for {weekday} at {time}",
        "how many miles does it have",
        "it has about {number} thousand miles",
        "what's the monthly payment on a {duration} loan",
        "that would be {amount} a month at {percent}",
        "does it come with a warranty",
        "the extended warranty is {amount}",
        "i'm trading in my {year} {car}",
        "do you have it in blue or silver",
        "can i put {amount} down",
        "i need to bring my car in for service",
        "my check engine light came on",
        "the oil change is due at {number} thousand miles",
        "your service appointment is on {date} at {time}",
        "the repair will cost {amount}",
        "is there a lease special on the {car}",
        "the lease is {amount} a month for {duration}",
        "the dealer fee is {amount}",
        "we're open until {time} on {weekday}",
    ),
    "telecom": (
        "my internet has been down since {weekday}",
        "i'd like to upgrade to the {plan}",
        "what's included in the {plan}",
        "the {plan} is {amount} a month",
        "my bill this month was {amount} instead of {amount2}",
        "why was i charged for {feature}",
        "i want to port my number {phone}",
        "my phone number is {phone}",
        "can you turn on {feature} for my line",
        "i'm going abroad and need {feature}",
        "have you tried restarting the router",
        "the lights on the modem are blinking orange",
        "a technician can come on {date} between {time} and {time}",
        "i want to cancel my service",
        "we can offer you {percent} off for {duration}",
        "my contract ends on {date}",
        "the early termination fee is {amount}",
        "i'm getting really slow speeds in the evening",
        "i'd like to add a line for my daughter",
        "your account pin is {last4}",
        "the imei number is {account}",
        "my calls keep dropping",
        "i'm not getting any signal at {address}",
        "we'll credit {amount} to your account",
        "switch me to paperless billing please",
        "my autopay failed on the {ordinal}",
    ),
}


@dataclass(frozen=True, slots=True)
class Template:
    """One template: its domain (or 'common') and its text with {slot} fields."""

    domain: str
    text: str

    @property
    def split(self) -> str:
        return "dev" if is_dev_item("template:" + self.text) else "train"


@cache
def templates(split: str) -> tuple[Template, ...]:
    """Templates of one split; a template is in exactly one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(
        Template(domain, text)
        for domain, texts in TEMPLATES.items()
        for text in texts
        if Template(domain, text).split == split
    )


def fill_template(template: str, rng: np.random.Generator, split: str, domain: str) -> str:
    """Fill a template's slots; the result is normalised text."""
    values = _slot_values(rng, split, domain)
    values["_type"] = _pick(rng, _STREET_TYPES)
    return normalize_text(template.format(**values))


# --------------------------------------------------------------------------------------------------
# General English
@cache
def general_sentences(split: str) -> tuple[str, ...]:
    """Normalised sentences of 4 to 24 words from the installed fortunes files, split by hash."""
    if not FORTUNES_DIR.exists():
        raise TextDataError(f"{FORTUNES_DIR} is missing: apt-get install fortunes")
    seen: set[str] = set()
    out = []
    for name in FORTUNE_FILES:
        path = FORTUNES_DIR / name
        if not path.exists():
            continue
        raw = path.read_text(encoding="utf-8", errors="ignore")
        for cookie in raw.split("\n%\n"):
            # attributions ("-- Mark Twain") and indented verse/code are not prose.
            lines = [ln for ln in cookie.splitlines() if not ln.strip().startswith(("--", "- ", ">"))]
            body = " ".join(ln.strip() for ln in lines)
            if not body.isascii() or re.search(r"[<>{}\[\]|\\=_~^#@*/]", body):
                continue
            for sentence in re.split(r"(?<=[.!?;:])\s+", body):
                text = normalize_text(sentence)
                if 4 <= len(text.split()) <= 24 and text not in seen:
                    seen.add(text)
                    if ("dev" if is_dev_item("sentence:" + text, 5) else "train") == split:
                        out.append(text)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Hotwords: rare names and product terms, never in training texts.
HOTWORDS: tuple[str, ...] = tuple(
    """siobhan nakagawa|xiomara okonkwo|thaddeus villanueva|anneliese przybylski|oluwaseun adeyemi|
    bartholomew quigley|leocadia santangelo|ignatius fairweather|marisol echeverria|dagny thorvaldsen|
    evander mcgillicuddy|perpetua okafor|cornelius abernathy|ysolde marchetti|tobiah wojciechowski|
    fenella drummond|caspian holloway|zephyrine beaumont|radomir kowalczyk|henrietta blackwood|
    ambrose castellanos|ottoline fitzgerald|lysander pemberton|philippa vandermeer|augustin delacroix|
    wilhelmina ashcroft|ezekiel montgomery|seraphina lindqvist|barnaby whitlock|ines carvalho|
    quentin ravensworth|lucinda harrowgate|ignacio zubizarreta|rosalind featherstone|aurelio benedetti|
    cordelia winterbottom|leopold haverford|genevieve archambault|tiberius sandoval|imogen kettleworth|
    platinum voyager rewards|zenith flex saver|aurora home shield|titan total protect|nimbus unlimited max|
    quantum fiber ultra|stellar cash back elite|crestline premier checking|evermore term guardian|
    velocity auto plus|harbor gold advantage|summit smart mortgage|keystone secure vault|pinnacle wealth builder|
    horizon travel shield|orbit family connect|lumen home essentials|cascade rate lock|sterling youth saver|
    apex roadside guardian|meadowbrook heights|willowcrest estates|silverpine commons|larkspur terrace|
    juniper ridge villas|halcyon bay towers|briarwood crossing|ashford meadows|kingsbridge lofts|
    ravenswood manor|solara hybrid|vantor crossover|kestrel sport|marlowe touring|equinox volt|
    caliber ridgeline|tempest gt|sorrento luxe|aventis eco|norvik trail|flexpay installment|
    trustmark identity guard|clearview dental select|veritas whole life|guardian pet care plus|
    omni roam passport|hyperlink gigabit|streamwise bundle|connectiq mesh|priority concierge line|
    quickclaim express|safeharbor flood plus|brightpath student refinance|ironclad fraud alert|
    mosaic rewards visa|paragon jumbo loan|fairway escrow services|bellwether appraisal|
    northstar title company|evergreen relocation package|crescent lease assist|topaz trade in bonus|
    cobalt protection package|zephyr data boost|echo voicemail pro|prism family locator""".replace(
        "\n", ""
    ).split("|")
)
HOTWORDS = tuple(h.strip() for h in HOTWORDS)
SPOKEN_HOTWORD_COUNT = 12
_HOTWORD_TEMPLATES = (
    "hi my name is {h} and i'm calling about my account",
    "can i speak with {h} please",
    "i'm interested in the {h}",
    "tell me more about {h}",
    "i was told {h} would cover this",
    "is {h} available in my area",
    "i'd like to sign up for {h}",
    "the account holder is {h}",
    "please transfer me to {h}",
    "how much does {h} cost per month",
)


@cache
def _hotword_tokens() -> frozenset[str]:
    return frozenset(w for h in HOTWORDS for w in h.split())


def spoken_hotwords(seed: int) -> tuple[str, ...]:
    """The few hotword phrases actually spoken in the hotword dev subset."""
    rng = np.random.default_rng([seed, 7])
    idx = rng.choice(len(HOTWORDS), size=SPOKEN_HOTWORD_COUNT, replace=False)
    return tuple(HOTWORDS[int(i)] for i in sorted(idx))


def hotword_text(rng: np.random.Generator, seed: int) -> str:
    """One utterance that contains a spoken hotword phrase."""
    return normalize_text(_pick(rng, _HOTWORD_TEMPLATES).format(h=_pick(rng, spoken_hotwords(seed))))


# --------------------------------------------------------------------------------------------------
class TextSampler:
    """Draws (text, subset) pairs for a split from a caller's rng; train never yields dev-held items."""

    def __init__(self, split: str, *, general_fraction: float = 0.3) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.general_fraction = general_fraction
        self._by_domain: dict[str, list[str]] = {d: [] for d in DOMAINS}
        common = [t.text for t in templates(split) if t.domain == "common"]
        for t in templates(split):
            if t.domain != "common":
                self._by_domain[t.domain].append(t.text)
        for d in DOMAINS:
            self._by_domain[d].extend(common)
        self._fillers = fillers(split)
        self._general = general_sentences(split)

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        """Returns (normalised text, subset name)."""
        if rng.random() < self.general_fraction:
            return _pick(rng, self._general), "general"
        domain = _pick(rng, DOMAINS)
        text = fill_template(_pick(rng, self._by_domain[domain]), rng, self.split, domain)
        if rng.random() < 0.2:
            text = f"{_pick(rng, self._fillers)} {text}"
        if rng.random() < 0.15:
            # two turns joined make longer utterances
            other = fill_template(_pick(rng, self._by_domain[domain]), rng, self.split, domain)
            text = f"{text} {other}"
        return text, domain


def vocabulary(texts: list[str] | tuple[str, ...]) -> set[str]:
    """The set of words in normalised texts."""
    return {w for t in texts for w in t.split()}
