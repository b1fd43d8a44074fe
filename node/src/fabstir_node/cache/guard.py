"""The near-miss guard: what an embedding cannot tell apart, compared word by word.

Sentence embeddings score "convert str to int" and "convert int to str" at 0.99, "USD to
EUR" and "EUR to USD" at 0.98, "ascending" and "descending" at 0.95 (DESIGN §9): no threshold
separates a paraphrase from a question with another answer. So a semantic hit must also pass
:func:`check`, which compares the two prompts' *answer-changing details* and refuses the hit
when any differs:

- **numbers**: the multiset of numbers, digits or words ("3", "three", "2.5", "1,000", "10k",
  "third");
- **negation**: whether the prompt is negated ("not", "no", "never", "n't", "without"...);
- **units and currencies**, in order of appearance ("$", "usd", "dollars" are one unit);
- **entities**: names and code identifiers (capitalised words inside a sentence, CamelCase,
  snake_case, dotted names, `backticked` or "quoted" text), compared case-insensitively;
- **direction**: the order of the two words around "to", "into", "from", "vs", "than",
  "before", "after"... ("str to int" vs "int to str");
- **opposites**: one prompt says "ascending", "max", "encrypt", "upload"... and the other the
  opposite.

Each rule can only turn a hit into a miss, never the reverse, so the guard trades hit rate for
correctness; its figures on GPTCache's benchmark and our own near-miss set are in the README.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\S+", text))


_WORD = re.compile("[A-Za-z][A-Za-z0-9_.'\u2019-]*[A-Za-z0-9_]|[A-Za-z]")
_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)*[kKmMbB]?\b|[A-Za-z][A-Za-z0-9_'" "\u2019" r"-]*|[$€£¥%°]")
_QUOTED = re.compile(r"`([^`]+)`|\"([^\"]+)\"|“([^”]+)”")

_NUMBER_WORDS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        _words(
            "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty"
        )
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80}
_NUMBER_WORDS |= {"ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6}
_NUMBER_WORDS |= {"billion": 10**9, "dozen": 12, "twice": 2, "double": 2}
_ORDINALS = {
    w: i + 1
    for i, w in enumerate(_words("_ second third fourth fifth sixth seventh eighth ninth tenth"))
}
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9}

_NEGATIONS = {
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor",
    "without", "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
    "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt",
    "mustnt", "neednt", "aint", "exclude", "excluding", "except",
}  # fmt: skip

_UNITS = {
    "$": "usd", "usd": "usd", "dollar": "usd", "dollars": "usd", "€": "eur", "eur": "eur",
    "euro": "eur", "euros": "eur", "£": "gbp", "gbp": "gbp", "pound": "gbp", "pounds": "gbp",
    "¥": "jpy", "jpy": "jpy", "yen": "jpy", "cny": "cny", "yuan": "cny", "rmb": "cny",
    "inr": "inr", "rupee": "inr", "rupees": "inr", "chf": "chf", "franc": "chf",
    "btc": "btc", "bitcoin": "btc", "eth": "eth", "ether": "eth", "ethereum": "eth",
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "mile": "mile", "miles": "mile", "mi": "mile", "m": "m", "meter": "m", "meters": "m",
    "metre": "m", "metres": "m", "cm": "cm", "mm": "mm", "inch": "inch", "inches": "inch",
    "foot": "foot", "feet": "foot", "ft": "foot", "yard": "yard", "yards": "yard",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "gram": "g", "grams": "g",
    "lb": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz", "oz": "oz", "ton": "ton",
    "tons": "ton", "tonne": "ton", "liter": "l", "liters": "l", "litre": "l", "litres": "l",
    "l": "l", "ml": "ml", "gallon": "gal", "gallons": "gal", "celsius": "c", "°": "deg",
    "fahrenheit": "f", "kelvin": "k", "second": "s", "seconds": "s", "sec": "s",
    "minute": "min", "minutes": "min", "hour": "h", "hours": "h", "day": "day",
    "days": "day", "week": "week", "weeks": "week", "month": "month", "months": "month",
    "year": "year", "years": "year", "%": "percent", "percent": "percent",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "byte": "byte", "bytes": "byte",
    "bit": "bit", "bits": "bit", "mph": "mph", "kmh": "kmh", "watt": "w", "watts": "w",
    "kw": "kw", "kwh": "kwh", "volt": "v", "volts": "v",
}  # fmt: skip
# "pound", "second", "m"... are also ordinary words; in a prompt with a number or a currency
# around they are units, and a false "unit" can only turn a hit into a miss.

_DIRECTION = {"to", "into", "from", "vs", "versus", "than", "before", "after", "over", "onto"}

_OPPOSITES = [
    ("ascending", "descending"), ("asc", "desc"), ("increase", "decrease"),
    ("increasing", "decreasing"), ("max", "min"), ("maximum", "minimum"),
    ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
    ("most", "least"), ("more", "less"), ("more", "fewer"), ("greater", "less"),
    ("greater", "smaller"), ("larger", "smaller"), ("higher", "lower"), ("high", "low"),
    ("first", "last"), ("earliest", "latest"), ("oldest", "newest"), ("old", "new"),
    ("encrypt", "decrypt"), ("encode", "decode"), ("encoding", "decoding"),
    ("compress", "decompress"), ("serialize", "deserialize"), ("import", "export"),
    ("upload", "download"), ("push", "pull"), ("buy", "sell"), ("before", "after"),
    ("above", "below"), ("left", "right"), ("true", "false"), ("enable", "disable"),
    ("add", "remove"), ("insert", "delete"), ("open", "close"), ("start", "stop"),
    ("inner", "outer"), ("upper", "lower"), ("uppercase", "lowercase"), ("long", "short"),
    ("big", "small"), ("hot", "cold"), ("positive", "negative"), ("win", "lose"),
    ("input", "output"), ("read", "write"), ("send", "receive"), ("client", "server"),
    ("public", "private"), ("sync", "async"), ("synchronous", "asynchronous"),
    ("horizontal", "vertical"), ("horizontally", "vertically"), ("row", "column"),
    ("rows", "columns"), ("even", "odd"), ("north", "south"), ("east", "west"),
    ("male", "female"), ("men", "women"), ("pros", "cons"), ("advantages", "disadvantages"),
    ("benefits", "risks"), ("allow", "deny"), ("accept", "reject"), ("include", "exclude"),
    ("lend", "borrow"), ("import", "export"), ("inhale", "exhale"), ("up", "down"),
    ("forward", "backward"), ("forwards", "backwards"), ("internal", "external"),
    ("min", "max"), ("early", "late"), ("fast", "slow"), ("faster", "slower"),
    ("closer", "farther"), ("closer", "further"), ("near", "far"), ("nearest", "farthest"),
    ("inside", "outside"), ("top", "bottom"), ("begin", "end"), ("under", "over"),
    ("cheap", "expensive"), ("cheapest", "most expensive"), ("light", "dark"),
]  # fmt: skip

_STOP = frozenset(
    _words(
        "a an the is are was were be been being am do does did of in on at for with by and or as "
        "it its this that these those i you your we our my me he she they them his her their "
        "what which who whom how why when where can could should would will shall may might must "
        "please tell explain give show me some any there here about than then so if"
    )
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # which rule refused it: numbers, negation, units, entities...


@dataclass(frozen=True)
class Details:
    """What in a prompt changes its answer although an embedding barely sees it."""

    numbers: Counter[float | str]
    negated: bool
    units: tuple[str, ...]
    entities: frozenset[str]
    words: tuple[str, ...]  # lower-case content words, in order
    flanks: frozenset[tuple[str, str]]  # (before, after) around a direction word

    @classmethod
    def of(cls, text: str) -> Details:
        text = unicodedata.normalize("NFKC", text)
        tokens = _TOKEN.findall(text)
        lower = [t.lower().replace("\u2019", "'") for t in tokens]
        numbers: Counter[float | str] = Counter()
        units: list[str] = []
        for i, (token, low) in enumerate(zip(tokens, lower, strict=True)):
            if token[0].isdigit():
                numbers[_number(token)] += 1
            elif low in _NUMBER_WORDS:
                numbers[_NUMBER_WORDS[low]] += 1
            elif low in _ORDINALS:  # "a second opinion" counts too: refusing is safe
                numbers[_ORDINALS[low]] += 1
            if low in _UNITS and _is_unit(tokens, lower, i):
                units.append(_UNITS[low])
        negated = any(low.replace("'", "") in _NEGATIONS for low in lower) or any(
            low.endswith("n't") for low in lower
        )
        words = tuple(_stem(low) for low in lower if low.isalpha() and low not in _STOP)
        return cls(numbers, negated, tuple(units), _entities(text), words, _flanks(lower))


def check(query: str | Details, cached: str | Details) -> Verdict:
    """Whether ``cached``'s answer may answer ``query`` as far as the details go (each a
    text, or its :class:`Details` when the caller has them already)."""
    q = query if isinstance(query, Details) else Details.of(query)
    c = cached if isinstance(cached, Details) else Details.of(cached)
    if q.numbers != c.numbers:
        return Verdict(False, "numbers")
    if q.negated != c.negated:
        return Verdict(False, "negation")
    if q.units != c.units:
        return Verdict(False, "units")
    if q.entities - c.entities and c.entities - q.entities:
        return Verdict(False, "entities")
    if _reordered(q, c):
        return Verdict(False, "direction")
    if _opposed(set(q.words), set(c.words)):
        return Verdict(False, "opposites")
    return Verdict(True)


# --------------------------------------------------------------------------- rules


def _number(token: str) -> float | str:
    low = token.lower()
    scale = _SUFFIX.get(low[-1], 1.0) if low[-1].isalpha() else 1.0
    digits = low.rstrip("kmb").replace(",", "")
    if digits.count(".") > 1:  # a version number: compared as written
        return digits
    return float(digits) * scale


def _is_unit(tokens: list[str], lower: list[str], i: int) -> bool:
    """A symbol or an unambiguous unit always; a word that is also an ordinary word ("m",
    "second", "pound", "day") only next to a number."""
    token = tokens[i]
    if not token[0].isalpha() or (len(lower[i]) > 2 and lower[i] not in _AMBIGUOUS):
        return True
    near = tokens[max(0, i - 1) : i + 2]
    return any(t[0].isdigit() or t.lower() in _NUMBER_WORDS for t in near if t != token)


_AMBIGUOUS = {"second", "seconds", "pound", "pounds", "day", "days", "week", "weeks", "month"}
_AMBIGUOUS |= {"months", "year", "years", "hour", "hours", "minute", "minutes", "light"}
_AMBIGUOUS |= {"bit", "bits", "byte", "bytes", "franc", "ton", "tons", "feet", "foot", "yard"}
_AMBIGUOUS |= {"yards", "ether", "percent"}


def _entities(text: str) -> frozenset[str]:
    found: set[str] = set()
    for groups in _QUOTED.findall(text):
        found.update(g.strip().lower() for g in groups if g.strip())
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = _WORD.findall(sentence)
        for i, word in enumerate(words):
            inner_caps = any(ch.isupper() for ch in word[1:])
            code = "_" in word or ("." in word.strip(".") and not word.endswith("."))
            proper = word[0].isupper() and i > 0 and word.lower() not in _STOP
            if inner_caps or code or proper:
                found.add(word.lower().rstrip(".'\u2019"))
    return frozenset(found)


def _flanks(lower: list[str]) -> frozenset[tuple[str, str]]:
    pairs = set()
    content = [(i, w) for i, w in enumerate(lower) if w not in _STOP and w not in _DIRECTION]
    for i, word in enumerate(lower):
        if word not in _DIRECTION:
            continue
        before = [w for j, w in content if j < i]
        after = [w for j, w in content if j > i]
        if before and after:
            pairs.add((_stem(before[-1]), _stem(after[0])))
    return frozenset(pairs)


def _reordered(q: Details, c: Details) -> bool:
    """The same two words around a direction word, the other way round ("str to int", "int
    to str")."""
    return any((b, a) in c.flanks for a, b in q.flanks if a != b)


_OPPOSITE_OF: dict[str, set[str]] = {}
for _x, _y in _OPPOSITES:
    if " " in _x or " " in _y:
        continue
    _OPPOSITE_OF.setdefault(_x, set()).add(_y)
    _OPPOSITE_OF.setdefault(_y, set()).add(_x)


def _opposed(q: set[str], c: set[str]) -> bool:
    for word in q ^ c:
        mine, other = (q, c) if word in q else (c, q)
        if any(o in other and o not in mine for o in _OPPOSITE_OF.get(word, ())):
            return True
    return False


def _stem(word: str) -> str:
    word = word.strip("'\u2019")
    if word in _OPPOSITE_OF:  # keep opposites whole: "less" is not "les"
        return word
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def overlap(a: Details, b: Details) -> float:
    """Jaccard similarity of two texts' content words (stemmed as the guard stems them): the
    cache's tie-breaker between candidates the embedding scores alike."""
    wa, wb = set(a.words), set(b.words)
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0
