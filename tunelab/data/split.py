"""Stratified, seeded splitting that never puts one text in two splits."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict


def remove_leaks(items, keys: list, owner: dict, split: str, what: str):
    """`items` (anything with .file, .where, .unit and .take) without those whose key another split keeps
    (`owner`: key -> split), and a problem naming each removed one: (kept items, problems)."""
    from tunelab.data.load import Problem

    keep, removed = [], []
    for i, key in enumerate(keys):
        holder = owner.get(key)
        if holder is not None and holder != split:
            removed.append(Problem(items.file, items.where[i], None, "in_other_split",
                                   f"the same {what} is in the {holder} split, which keeps it", items.unit))
        else:
            keep.append(i)
    return items.take(keep), removed


def _apportion(n: int, fractions: list[float]) -> list[int]:
    """Split n into parts proportional to fractions (summing to 1), each within 1 of its exact share.

    Largest-remainder method: floors first, then the leftover units go to the largest remainders.
    """
    exact = [n * f for f in fractions]
    parts = [math.floor(e) for e in exact]
    order = sorted(range(len(parts)), key=lambda k: (exact[k] - parts[k], -k), reverse=True)
    for k in order[: n - sum(parts)]:
        parts[k] += 1
    return parts


def stratified_split(keys: list, strata: list, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Assign row indices to splits.

    Rows with the same key (the same text) stay together; groups are stratified by the stratum of their
    first row (the label), so each split holds within ±1 group of its exact share of every stratum.
    """
    by_stratum: dict = defaultdict(list)
    if len(set(keys)) == len(keys):  # the usual case after deduplication: every row is its own group
        for i, stratum in enumerate(strata):
            by_stratum[stratum].append((i,))
    else:
        groups: dict = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            by_stratum[strata[members[0]]].append(members)
    names = list(fractions)
    shares = [fractions[n] for n in names]
    rng = random.Random(seed)
    out: dict[str, list[int]] = {n: [] for n in names}
    for stratum in sorted(by_stratum, key=str):
        members = by_stratum[stratum]
        rng.shuffle(members)
        start = 0
        for name, count in zip(names, _apportion(len(members), shares)):
            for group in members[start:start + count]:
                out[name].extend(group)
            start += count
    for name in names:
        out[name].sort()  # keep the file's order inside each split
    return out


def label_counts(labels: list) -> Counter:
    """How many rows carry each label (each label of a multi-label row counts once)."""
    counts: Counter = Counter()
    for label in labels:
        if isinstance(label, list):
            counts.update(label)
        else:
            counts[label] += 1
    return counts
