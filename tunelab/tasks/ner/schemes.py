"""Tag schemes: check a tag sequence, detect a dataset's scheme, convert to and from IOB2.

IOB2 (also called BIO) is the internal form: every entity starts with `B-TYPE` and goes on with `I-TYPE`.
IOB1 starts an entity with `I-` and uses `B-` only to split two adjacent entities of one type. IOBES marks
single-word entities `S-` and last words `E-`; BILOU is the same scheme with `L-` and `U-` for `E-` and `S-`.
A tag is `O` or `PREFIX-TYPE` (split at the first '-'), with a prefix of the scheme and a non-empty type.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

from tunelab.data.load import Problem
from tunelab.errors import ConfigError

PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES", "BILOU": "BILU"}
ALIASES = {"BIO": "IOB2", "IOB": "IOB1"}
_TO_IOBES = {"L": "E", "U": "S"}  # BILOU's letters as IOBES's


def canonical(scheme: str) -> str:
    """The scheme's name in PREFIXES (BIO -> IOB2, case-insensitive); ConfigError for an unknown name."""
    name = ALIASES.get(scheme.upper(), scheme.upper())
    if name not in PREFIXES:
        raise ConfigError(f"unknown tag scheme '{scheme}'; allowed: IOB1, IOB2 (BIO), IOBES, BILOU, or auto")
    return name


def split_tag(tag: str) -> tuple[str, str | None]:
    """('O', None) or (prefix, type); ('', None) for a tag that is neither O nor PREFIX-TYPE."""
    if tag == "O":
        return "O", None
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash and kind and prefix != "O" else ("", None)


def check(tags: Sequence[str], scheme: str) -> tuple[int, str] | None:
    """(index, message) of the first tag that is invalid in the scheme, or None when the sequence is valid."""
    scheme = canonical(scheme)
    allowed = PREFIXES[scheme]
    names = {"E": "L", "S": "U"} if scheme == "BILOU" else {"E": "E", "S": "S"}
    prev_prefix, prev_kind = "O", None  # the sentence start behaves like O
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix != "O" and (not prefix or prefix not in allowed):
            return i, (f"'{tag}' is not a {scheme} tag (expected O or {'/'.join(allowed)}-TYPE, e.g. {allowed[0]}-PER)")
        where = "at the start of the sentence" if i == 0 else f"after {tags[i - 1]}"
        prefix, p = _TO_IOBES.get(prefix, prefix), _TO_IOBES.get(prev_prefix, prev_prefix)
        same = kind == prev_kind and p != "O"
        if scheme == "IOB2" and prefix == "I" and not same:
            return i, f"{tag} {where} is not valid IOB2 (an entity starts with B-{kind})"
        if scheme == "IOB1" and prefix == "B" and not same:
            return i, f"{tag} {where} is not valid IOB1 (B- only splits two adjacent {kind} entities; start with I-{kind})"
        if scheme in ("IOBES", "BILOU"):
            open_ = p in "BI"  # an entity began and has not ended
            if open_ and not (prefix in "IE" and kind == prev_kind):
                return i, (f"{tag} {where} is not valid {scheme} ({tags[i - 1]} must be followed by "
                           f"I-{prev_kind} or {names['E']}-{prev_kind})")
            if not open_ and prefix in "IE":
                return i, f"{tag} {where} is not valid {scheme} (an entity starts with B-{kind} or {names['S']}-{kind})"
        prev_prefix, prev_kind = split_tag(tag)
    if scheme in ("IOBES", "BILOU") and tags and _TO_IOBES.get(prev_prefix, prev_prefix) in "BI":
        return len(tags) - 1, (f"the sentence ends inside an entity at {tags[-1]} "
                               f"(not valid {scheme}: an entity ends with {names['E']}-{prev_kind})")
    return None


def detect(tag_sequences: Iterable[Sequence[str]]) -> str:
    """The scheme of a dataset: IOBES/BILOU when any E-/S- (L-/U-) tag appears, else IOB1 or IOB2.

    Between IOB1 and IOB2, the one under which fewer tags are invalid: IOB2 files have `B-` after `O`,
    IOB1 files start entities with `I-`. A tie (e.g. only single-word entities, or no entity) is IOB2.
    """
    iob1_bad = iob2_bad = 0
    letters = set()
    for tags in tag_sequences:
        prev = (None, None)
        for tag in tags:
            prefix, kind = split_tag(tag)
            letters.add(prefix)
            starts = not (prev[1] == kind and prev[0] in ("B", "I"))  # not a continuation of the same type
            iob1_bad += prefix == "B" and starts
            iob2_bad += prefix == "I" and starts
            prev = (prefix, kind)
    if letters & {"E", "S"}:
        return "IOBES"
    if letters & {"L", "U"}:
        return "BILOU"
    return "IOB1" if iob1_bad < iob2_bad else "IOB2"


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """The same entities in IOB2. Exact for valid sequences (see `check`); an invalid transition maps tag by
    tag (IOBES: S->B, E->I), leaving a stray I- that strict IOB2 scoring and `spans.entities` ignore."""
    scheme = canonical(scheme)
    out, prev = [], ("O", None)
    for tag in tags:
        prefix, kind = split_tag(tag)
        prefix = _TO_IOBES.get(prefix, prefix)
        if prefix not in ("O", "B", "I", "E", "S"):
            raise ValueError(f"'{tag}' is not a {scheme} tag")
        if prefix == "O":
            out.append("O")
        elif prefix in ("S", "E"):
            out.append(f"{'B' if prefix == 'S' else 'I'}-{kind}")
        elif scheme == "IOB1" and prefix == "I" and not (prev[1] == kind and prev[0] in ("B", "I")):
            out.append(f"B-{kind}")  # IOB1's I- that starts an entity
        else:
            out.append(f"{prefix}-{kind}")
        prev = (prefix, kind)
    return out


def from_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Valid IOB2 tags written in another scheme (the inverse of `to_iob2`)."""
    scheme = canonical(scheme)
    if scheme == "IOB2":
        return list(tags)
    out = []
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
        elif scheme == "IOB1":
            after_same = i > 0 and split_tag(tags[i - 1])[1] == kind
            out.append(f"B-{kind}" if prefix == "B" and after_same else f"I-{kind}")
        else:
            goes_on = i + 1 < len(tags) and tags[i + 1] == f"I-{kind}"
            last = "E" if scheme == "IOBES" else "L"
            single = "S" if scheme == "IOBES" else "U"
            out.append(f"{prefix}-{kind}" if goes_on else f"{single if prefix == 'B' else last}-{kind}")
    return out


def entity_types(tag_sequences: Iterable[Sequence[str]]) -> list[str]:
    """The entity types used in these sentences, sorted (`B-PER`, `I-PER`, `S-PER` all give PER)."""
    return sorted({kind for tags in tag_sequences for tag in tags if (kind := split_tag(tag)[1])})


def iob2_labels(types: Iterable[str]) -> list[str]:
    """The model's label list for these types: O, then B-/I- of each type in the given order."""
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


class Validated(NamedTuple):
    kept: list[int]  # indices of the valid sentences
    problems: list[Problem]  # one per invalid sentence
    tags: list[list[str]]  # IOB2 tags of the kept sentences, in order
    scheme: str  # the scheme read (the detected one for "auto")


def validate_sentences(sentences, scheme: str = "auto") -> Validated:
    """Check every labelled sentence in the scheme and convert the valid ones to IOB2.

    Each invalid sentence is one Problem (reason `invalid_tag_sequence`) naming the line of the offending
    token and the transition, e.g. "'York': I-PER after B-LOC is not valid IOB2".
    """
    if sentences.tags is None:
        raise ValueError(f"{sentences.file}: the sentences were read without tags; there is nothing to validate")
    scheme = detect(sentences.tags) if scheme == "auto" else canonical(scheme)
    kept, problems, converted = [], [], []
    for i, tags in enumerate(sentences.tags):
        found = check(tags, scheme)
        if found is None:
            kept.append(i)
            converted.append(to_iob2(tags, scheme))
            continue
        j, message = found
        token = sentences.tokens[i][j]
        place = f"'{token}'" if sentences.format == "conll" else f"{sentences.tags_key}[{j}] ('{token}')"
        problems.append(Problem(sentences.file, sentences.line_of(i, j), sentences.tags_key, "invalid_tag_sequence",
                                f"{place}: {message}", sentences.unit))
    return Validated(kept, problems, converted, scheme)
