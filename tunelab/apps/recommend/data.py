"""Interactions and items for the recommender: read, checked (a bad row is named by file, line and column) and
split by time per user.

The split is leave-last-out by time: for each user with at least three interactions the last one is the test
case and the one before it the validation case; everything earlier is training. Every statistic the models learn
from -- popularity, co-occurrence, the tags in an item's text -- comes from training interactions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.errors import DataError


@dataclass
class Catalogue:
    ids: list[str]  # item ids in file order; an item's code is its position
    texts: list[str]  # what the item tower reads (title, the other text columns, training tags)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Interactions:
    users: np.ndarray  # (n,) user codes
    items: np.ndarray  # (n,) item codes (positions in the catalogue)
    times: np.ndarray  # (n,) int64 seconds
    user_ids: list[str]
    dropped: dict = field(default_factory=dict)  # what was left out and why: {reason: count}


@dataclass
class Split:
    """Leave-last-out by time. `train`: (user, item) codes in time order per user; `validation`, `test`: one item
    per user (-1: none)."""

    train_users: np.ndarray
    train_items: np.ndarray
    validation: np.ndarray  # (users,) item code or -1
    test: np.ndarray  # (users,) item code or -1
    users: int
    items: int

    def history(self, upto: str = "validation") -> list[np.ndarray]:
        """Each user's items in time order: training, plus the validation item when ranking the test case."""
        order = np.argsort(self.train_users, kind="stable")  # train is already in time order per user
        bounds = np.searchsorted(self.train_users[order], np.arange(self.users + 1))
        out = [self.train_items[order[bounds[u]:bounds[u + 1]]] for u in range(self.users)]
        if upto == "test":
            out = [np.append(h, v) if v >= 0 else h for h, v in zip(out, self.validation)]
        return out


def _frame(path: Path, what: str, wanted: dict[str, str]):
    """The file as a DataFrame of strings with the `wanted` columns ({role: column}); a missing column names the
    header and the setting that renames it."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path).astype(str)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False).astype(str)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {suffix.lstrip('.') or 'CSV'} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None
    for role, column in wanted.items():
        if column not in frame.columns:
            raise DataError(f"{path}: missing column '{column}' ({role}); the header has: "
                            f"{', '.join(repr(c) for c in frame.columns)} (set columns.{role})")
    return frame


def _times(values, path: Path, column: str) -> np.ndarray:
    """Unix seconds or ISO 8601 dates -> int64 seconds; the first bad value named with its line."""
    import pandas as pd

    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    dates = np.isnan(numeric)
    if dates.any():
        parsed = pd.to_datetime(values[dates], errors="coerce", utc=True, format="ISO8601")
        seconds = np.array([t.timestamp() if not pd.isna(t) else np.nan for t in parsed])
        numeric[dates] = seconds
    bad = np.flatnonzero(np.isnan(numeric))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}:line {i + 2}: column '{column}': {values.iloc[i]!r} is not a timestamp (Unix "
                        f"seconds or an ISO 8601 date){f'; {len(bad) - 1} more rows like it' if len(bad) > 1 else ''}")
    return numeric.astype(np.int64)


def read_items(path: Path, columns) -> tuple[list[str], list[str], dict[str, int]]:
    """-> (ids, texts without tags, code of each id); duplicate ids and empty texts are errors."""
    wanted = {"item_id": columns.item_id, **{f"item_text ({c})": c for c in columns.item_text}}
    frame = _frame(path, "items", wanted)
    ids = [s.strip() for s in frame[columns.item_id]]
    code: dict[str, int] = {}
    for i, item in enumerate(ids):
        if not item:
            raise DataError(f"{path}:line {i + 2}: column '{columns.item_id}': the id is empty")
        if item in code:
            raise DataError(f"{path}:line {i + 2}: column '{columns.item_id}': the id '{item}' is on line "
                            f"{code[item] + 2} too")
        code[item] = i
    parts = [[f"{c}: {v.replace(columns.list_separator, ', ').strip()}" if j else v.strip()
              for j, (c, v) in enumerate(zip(columns.item_text, values)) if v.strip()]
             for values in zip(*(frame[c] for c in columns.item_text))]
    texts = [". ".join(p) for p in parts]
    for i, text in enumerate(texts):
        if not text:
            raise DataError(f"{path}:line {i + 2}: the item '{ids[i]}' has no text in {', '.join(columns.item_text)}")
    return ids, texts, code


def read_interactions(path: Path, columns, code: dict[str, int], items_path: Path,
                      min_rating: float | None) -> Interactions:
    """The interactions, in time order per user; an item id the items file does not have is an error naming both
    files. Below `min_rating` (when set) an interaction is not a positive and is dropped; a repeated (user, item)
    keeps its first time."""
    wanted = {"user": columns.user, "item": columns.item, "timestamp": columns.timestamp}
    if min_rating is not None:
        wanted["rating"] = columns.rating
    frame = _frame(path, "interactions", wanted)
    items = np.array([code.get(s.strip(), -1) for s in frame[columns.item]])
    unknown = np.flatnonzero(items < 0)
    if len(unknown):
        i = int(unknown[0])
        raise DataError(f"{path}:line {i + 2}: column '{columns.item}': no item has the id "
                        f"'{frame[columns.item].iloc[i]}' in {items_path}"
                        f"{f' ({len(unknown) - 1} more rows like it)' if len(unknown) > 1 else ''}")
    times = _times(frame[columns.timestamp], path, columns.timestamp)
    dropped = {}
    keep = np.ones(len(frame), dtype=bool)
    if min_rating is not None:
        import pandas as pd

        ratings = pd.to_numeric(frame[columns.rating], errors="coerce").to_numpy()
        bad = np.flatnonzero(np.isnan(ratings))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}:line {i + 2}: column '{columns.rating}': {frame[columns.rating].iloc[i]!r} is "
                            "not a number")
        keep &= ratings >= min_rating
        dropped["below min_rating"] = int((~keep).sum())
    user_names = frame[columns.user].str.strip().to_numpy()
    if (user_names == "").any():
        i = int(np.flatnonzero(user_names == "")[0])
        raise DataError(f"{path}:line {i + 2}: column '{columns.user}': the user id is empty")
    user_ids, users = np.unique(user_names, return_inverse=True)
    order = np.lexsort((np.arange(len(frame)), times, users))  # per user by time, ties in file order
    order = order[keep[order]]
    users, items, times = users[order], items[order], times[order]
    first = np.unique(users.astype(np.int64) * len(code) + items, return_index=True)[1]
    repeated = len(users) - len(first)
    if repeated:
        dropped["repeated (user, item)"] = repeated
        first.sort()
        users, items, times = users[first], items[first], times[first]
    return Interactions(users, items, times, [str(u) for u in user_ids], dropped)


def training_rows(interactions: Interactions) -> np.ndarray:
    """Which interactions are training ones: all but each user's last two, for users with at least three."""
    n_users = len(interactions.user_ids)
    ends = np.searchsorted(interactions.users, np.arange(n_users + 1))[1:]
    held = np.diff(np.append(0, ends)) >= 3
    keep = np.ones(len(interactions.users), dtype=bool)
    keep[ends[held] - 1] = keep[ends[held] - 2] = False
    return keep


def split_by_time(interactions: Interactions, items: int) -> Split:
    """Leave-last-out per user (users with fewer than three interactions are trained on only)."""
    users, n_users = interactions.users, len(interactions.user_ids)
    ends = np.searchsorted(users, np.arange(n_users + 1))[1:]
    held = np.diff(np.append(0, ends)) >= 3
    validation, test = np.full(n_users, -1), np.full(n_users, -1)
    test[held] = interactions.items[ends[held] - 1]
    validation[held] = interactions.items[ends[held] - 2]
    keep = training_rows(interactions)
    return Split(users[keep], interactions.items[keep], validation, test, n_users, items)


def item_tags(path: Path, columns, code: dict[str, int], user_code: dict[str, int], split: Split,
              last_training_time: np.ndarray, per_item: int) -> list[list[str]]:
    """Each item's most frequent tags (at most `per_item`), counting only tags a user gave by the time of their
    last training interaction and not on their held-out items: the test cases cannot leak through the text."""
    from collections import Counter

    frame = _frame(path, "tags", {"user": columns.user, "item": columns.item, "tag": columns.tag,
                                  "timestamp": columns.timestamp})
    times = _times(frame[columns.timestamp], path, columns.timestamp)
    counts: list[Counter] = [Counter() for _ in code]
    latest = int(last_training_time.max(initial=0))  # a tagger with no interactions: tags up to the training data's end
    for user, item, tag, when in zip(frame[columns.user].str.strip(), frame[columns.item].str.strip(),
                                     frame[columns.tag], times):
        u, i, tag = user_code.get(user), code.get(item), tag.strip().lower()
        if i is None or not tag:
            continue
        if u is None and when > latest or u is not None and (when > last_training_time[u]
                                                             or i in (split.validation[u], split.test[u])):
            continue
        counts[i][tag] += 1
    return [[t for t, _ in c.most_common(per_item)] for c in counts]
