"""The companies to follow, and which of them a text names.

A watchlist is a CSV: name, aliases ('|'-separated, optional), ticker (optional), sector (optional). Names and
aliases match case- and punctuation-insensitively on word boundaries ("Nokia Oyj", "NOKIA", "nokia's" all name
Nokia; "Nokian" does not). A ticker matches as a cashtag in any case ("$NOKIA") or as the upper-case word itself
("NOKIA"), so a ticker that is also a common word ("ON", "ALL") does not fire on ordinary text.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Case-folded words separated by single spaces, accents kept, punctuation gone: 'UPM-Kymmene's' -> 'upm kymmene s'."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


@dataclass
class Company:
    name: str
    aliases: list[str] = field(default_factory=list)
    ticker: str | None = None
    sector: str | None = None


class Watchlist:
    def __init__(self, companies: list[Company]):
        self.companies = {c.name: c for c in companies}
        self._by_phrase: dict[str, str] = {}
        for company in companies:
            for phrase in [company.name, *company.aliases]:
                key = normalise(phrase)
                if not key:
                    continue
                other = self._by_phrase.setdefault(key, company.name)
                if other != company.name:
                    raise TunelabError(f"watchlist: '{phrase}' names both {other} and {company.name}")
        # longest phrases first: "Stora Enso" before "Stora" when both are listed
        phrases = sorted(self._by_phrase, key=len, reverse=True)
        self._names = re.compile(r"(?<!\S)(" + "|".join(map(re.escape, phrases)) + r")(?!\S)") if phrases else None
        tickers = {c.ticker: c.name for c in companies if c.ticker}
        self._by_ticker = {t.upper(): n for t, n in tickers.items()}
        self._tickers = re.compile(r"(?<![\w$])(?:\$(" + "|".join(map(re.escape, tickers)) + r")|("
                                   + "|".join(map(re.escape, tickers)) + r"))(?!\w)", re.IGNORECASE) if tickers else None

    def find(self, text: str) -> list[str]:
        """The companies `text` names, each once, in the order first named."""
        found: dict[str, None] = {}
        if self._names is not None:
            for match in self._names.finditer(normalise(text)):
                found.setdefault(self._by_phrase[match.group(1)])
        if self._tickers is not None:
            for match in self._tickers.finditer(text):
                cashtag, bare = match.group(1), match.group(2)
                if cashtag or (bare and bare.isupper()):
                    found.setdefault(self._by_ticker[(cashtag or bare).upper()])
        return list(found)

    def link(self, entity: str) -> str | None:
        """The company an entity found by a NER model names, if any (the whole entity is one of its names)."""
        return self._by_phrase.get(normalise(entity))

    def sector(self, name: str) -> str | None:
        return self.companies[name].sector


def read_watchlist(path: Path) -> Watchlist:
    """The watchlist CSV, with errors that name the file and line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "name" not in columns:
                raise TunelabError(f"{path}: a watchlist needs a 'name' column (and optionally aliases, ticker, "
                                   f"sector); found columns: {', '.join(columns) or 'none'}")
            unknown = set(columns) - {"name", "aliases", "ticker", "sector"}
            if unknown:
                raise TunelabError(f"{path}: unknown column(s) {', '.join(sorted(unknown))}; a watchlist has name, "
                                   "aliases, ticker, sector")
            companies, seen = [], set()
            for line, row in enumerate(reader, start=2):
                name = (row.get("name") or "").strip()
                if not name:
                    raise TunelabError(f"{path}, line {line}: name is empty")
                if name in seen:
                    raise TunelabError(f"{path}, line {line}: {name} is listed twice")
                seen.add(name)
                ticker = (row.get("ticker") or "").strip().lstrip("$") or None
                if ticker is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+", ticker):
                    raise TunelabError(f"{path}, line {line}: ticker {ticker!r} is not letters, digits, '.' or '-'")
                aliases = [a.strip() for a in (row.get("aliases") or "").split("|") if a.strip()]
                companies.append(Company(name, aliases, ticker, (row.get("sector") or "").strip() or None))
    except FileNotFoundError:
        raise TunelabError(f"watchlist {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise TunelabError(f"{path}: not UTF-8 text (byte {exc.start}); save the watchlist as UTF-8") from None
    if not companies:
        raise TunelabError(f"{path}: the watchlist names no company")
    return Watchlist(companies)
