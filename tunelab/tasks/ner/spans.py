"""Entity spans from IOB2 tags (and back from character offsets), so predictions can be shown as entities.

Spans follow seqeval's strict IOB2 reading, the one the metrics score: an entity starts at `B-X` and goes on
over the `I-X` right after it. An `I-X` that does not continue an entity of type X (after `O`, at the start,
after another type) belongs to no entity. So the entities shown by a model are exactly the entities scored.
"""

from __future__ import annotations

import bisect
from typing import Sequence

Span = tuple[int, int, str, "float | None"]  # (first word, end word exclusive, type, score)


def entities(tags_iob2: Sequence[str], scores: Sequence[float] | None = None) -> list[Span]:
    """(start_word, end_word_exclusive, type, score) of each entity in one IOB2 sentence.

    scores: one confidence per word (the probability of the word's predicted tag, e.g. `probs.max(-1)`);
    an entity's score is the mean over its words, so one unsure word lowers it. None without scores.
    """
    found: list[Span] = []
    start, kind = None, None

    def close(end: int) -> None:
        if start is not None:
            score = None if scores is None else float(sum(scores[start:end]) / (end - start))
            found.append((start, end, kind, score))

    for i, tag in enumerate(tags_iob2):
        prefix, _, this = tag.partition("-")
        if prefix == "I" and start is not None and this == kind:
            continue
        close(i)
        start, kind = (i, this) if prefix == "B" else (None, None)
    close(len(tags_iob2))
    return found


def char_entities(text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[dict]:
    """Word spans as character spans of the original text: `text[start:end]` is the entity's text."""
    out = []
    for first, end, kind, score in spans:
        start, stop = offsets[first][0], offsets[end - 1][1]
        out.append({"start": start, "end": stop, "label": kind, "score": score, "text": text[start:stop]})
    return out


def tags_from_entities(word_spans: Sequence[tuple[int, int]], text_length: int,
                       entities_: Sequence[tuple[int, int, str]], key: str = "entities") -> tuple[list[str] | None, str | None]:
    """IOB2 tags of the words from character-offset entities (start, end exclusive, label).

    Returns (tags, None), or (None, message) naming the first entity (as `key[index]`) that cannot
    be expressed on these words: offsets outside the text, start >= end, a boundary inside a word, no
    word covered, or an overlap with another entity. Word spans must be sorted and disjoint.
    """
    starts = [s for s, _ in word_spans]
    ends = [e for _, e in word_spans]
    tags = ["O"] * len(word_spans)
    order = sorted(range(len(entities_)), key=lambda k: (entities_[k][0], entities_[k][1]))
    previous = None  # index of the entity before in text order, to find overlaps
    for k in order:
        start, end, label = entities_[k]
        place = f"{key}[{k}] ({start}-{end} '{label}')"
        if not 0 <= start < end <= text_length:
            why = "start must be before end" if start >= end else f"offsets must lie within the text (0-{text_length})"
            return None, f"{place}: {why}"
        if previous is not None and start < entities_[previous][1]:
            return None, f"{place} overlaps {key}[{previous}] ({entities_[previous][0]}-{entities_[previous][1]})"
        for edge in (start, end):
            w = bisect.bisect_right(starts, edge) - 1  # the word starting at or before this edge
            if w >= 0 and starts[w] < edge < word_spans[w][1]:
                return None, (f"{place}: {'starts' if edge == start else 'ends'} inside the word at "
                              f"{word_spans[w][0]}-{word_spans[w][1]}; entity offsets must fall on word boundaries")
        first, stop = bisect.bisect_left(starts, start), bisect.bisect_right(ends, end)  # the words inside
        if first >= stop:
            return None, f"{place}: covers no word (only spaces?)"
        tags[first:stop] = [f"B-{label}"] + [f"I-{label}"] * (stop - first - 1)
        previous = k
    return tags, None
