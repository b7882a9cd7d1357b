"""Words to sub-word windows for a fast tokenizer, and per-token scores back to one score per word.

A sentence longer than `max_length` tokens (special tokens included) is never truncated: it is cut into
overlapping windows of whole words. Each window is *responsible* for the central part of its overlaps, so
every word is labelled, scored and joined back exactly once, from the window where it has the most context.
A word gets its tag id on its FIRST sub-word; its other sub-words and the special tokens get -100, the index
the cross-entropy loss ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tunelab.errors import TunelabError
from tunelab.hub import rust_tokenizer

IGNORE = -100  # label of positions the loss skips (torch.nn.CrossEntropyLoss's default ignore_index)


@dataclass
class Window:
    """One model input: a run of whole words of one sentence between the tokenizer's special tokens."""

    sentence: int  # index of the sentence in the batch
    input_ids: list[int]
    word_ids: list[int | None]  # word index in the sentence per token; None for special tokens
    labels: list[int] | None  # tag id on the first sub-word of each owned word, IGNORE elsewhere; None unlabelled
    words: tuple[int, int]  # the words [start, end) inside this window
    owned: tuple[int, int]  # the words [start, end) this window labels and answers for in `join_windows`
    truncated: int = 0  # owned words longer than a whole window, cut to fit (their first sub-word is kept)
    unknown: int = 0  # owned words the tokenizer turned into no token, encoded as the unknown token


def encode_words(tokenizer, tokens_batch: Sequence[Sequence[str]], tag_ids_batch: Sequence[Sequence[int]] | None = None,
                 max_length: int = 128, stride: int | None = None) -> list[Window]:
    """Windows of every sentence, in sentence order (a sentence has at least one window, even when empty).

    stride: tokens of context shared by consecutive windows of a long sentence, as whole words; default
    max_length // 4. Windows then advance by at least max_length - specials - stride tokens.
    """
    backend = rust_tokenizer(tokenizer, None)
    if backend is None:
        raise TunelabError("token classification needs a fast tokenizer (one with word ids); this model has only a slow one")
    prefix, suffix = _special_tokens(backend)
    budget = max_length - len(prefix) - len(suffix)
    stride = max_length // 4 if stride is None else stride
    if budget < 1 or not 0 <= stride < budget:
        raise ValueError(f"max_length {max_length} with stride {stride}: need 0 <= stride < {budget} "
                         f"(max_length minus {len(prefix) + len(suffix)} special tokens)")
    encoded = backend.encode_batch([list(t) for t in tokens_batch], is_pretokenized=True, add_special_tokens=False)
    windows = []
    for i, enc in enumerate(encoded):
        pieces, unknown = _pieces(enc.ids, enc.word_ids, len(tokens_batch[i]), tokenizer.unk_token_id)
        cut = [p[:budget] for p in pieces]
        spans = plan_windows([len(p) for p in cut], budget, stride)
        tags = None if tag_ids_batch is None else tag_ids_batch[i]
        for (start, end), owned in zip(spans, _owned(spans, len(pieces))):
            ids, word_ids, labels = list(prefix), [None] * len(prefix), [IGNORE] * len(prefix)
            for w in range(start, end):
                ids += cut[w]
                word_ids += [w] * len(cut[w])
                first = tags[w] if tags is not None and owned[0] <= w < owned[1] else IGNORE
                labels += [first] + [IGNORE] * (len(cut[w]) - 1)
            ids += suffix
            word_ids += [None] * len(suffix)
            labels += [IGNORE] * len(suffix)
            windows.append(Window(i, ids, word_ids, None if tags is None else labels, (start, end), owned,
                                  sum(len(pieces[w]) > budget for w in range(*owned)),
                                  sum(w in unknown for w in range(*owned))))
    return windows


def _special_tokens(backend) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence ([CLS] and [SEP] for BERT)."""
    enc = backend.encode(["a"], is_pretokenized=True, add_special_tokens=True)
    inside = [k for k, w in enumerate(enc.word_ids) if w is not None]
    return enc.ids[:inside[0]], enc.ids[inside[-1] + 1:]


def _pieces(ids, word_ids, n_words: int, unk_id: int | None) -> tuple[list[list[int]], set[int]]:
    """Sub-word ids per word; a word with none (a zero-width or control character) gets the unknown token,
    so that every word keeps a position to be labelled and scored."""
    pieces: list[list[int]] = [[] for _ in range(n_words)]
    for token, w in zip(ids, word_ids):
        pieces[w].append(token)
    empty = {w for w in range(n_words) if not pieces[w]}
    if empty and unk_id is None:
        raise TunelabError(f"word {min(empty)} becomes no token and the tokenizer has no unknown token to stand for it")
    for w in empty:
        pieces[w] = [unk_id]
    return pieces, empty


def plan_windows(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of the windows of one sentence, given each word's token count (<= budget).

    Each window takes as many words as fit; the next starts up to `stride` tokens of whole words before
    the previous end (less when the next word would not fit), and always further on, so windows progress.
    """
    spans, start, n = [], 0, len(lengths)
    while True:
        end, used = start, 0
        while end < n and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            return spans
        room = min(stride, budget - lengths[end])  # overlap that still leaves room for the next word
        nxt, back = end, 0
        while nxt - 1 > start and back + lengths[nxt - 1] <= room:
            nxt -= 1
            back += lengths[nxt]
        start = nxt


def _owned(spans: list[tuple[int, int]], n_words: int) -> list[tuple[int, int]]:
    """Each window answers for the words up to the middle of its overlaps with its neighbours."""
    cuts = [0] + [(spans[k + 1][0] + spans[k][1]) // 2 for k in range(len(spans) - 1)] + [n_words]
    return [(cuts[k], cuts[k + 1]) for k in range(len(spans))]


def join_windows(windows: Sequence[Window], per_token_scores) -> list[np.ndarray]:
    """Per sentence, one row of scores per word: the first sub-word's row from the window that owns the word.

    per_token_scores[k] holds window k's scores per token (rows past its length, e.g. padding, are ignored),
    as anything numpy can read: logits, probabilities, or predicted ids.
    """
    rows: list[list] = []
    empty = {}
    for window, scores in zip(windows, per_token_scores, strict=True):
        scores = np.asarray(scores)
        while len(rows) <= window.sentence:
            rows.append([])
        empty[window.sentence] = scores[:0]
        seen = set()
        for pos, w in enumerate(window.word_ids):
            if w is not None and w not in seen and window.owned[0] <= w < window.owned[1]:
                seen.add(w)
                rows[window.sentence].append(scores[pos])
    return [np.stack(r) if r else empty[s] for s, r in enumerate(rows)]
