"""Product text says what the software does and what was measured, never when or in which working session it
was made: no working session named by its number and no issue number in any tracked file (history lives in git)."""

import re
import subprocess

from conftest import REPO

HISTORY = re.compile(r"\bsessions? [0-9]|(?<![\w/&#])#[0-9]+\b")
URL = re.compile(r"https?://\S+")
THIRD_PARTY = ("tunelab/monitor/static/", "tunelab/serve/static/")  # vendored, minified: not our text


def test_no_working_session_or_issue_number_in_tracked_text():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        if name.startswith(THIRD_PARTY):
            continue
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary (images, Parquet), or deleted in the working tree
        for number, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(URL.sub("", line)):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "history in product text:\n" + "\n".join(found[:40])


def test_the_pattern_catches_what_it_should():
    number = "8"  # joined at run time, so that this file holds no example of what it forbids
    assert HISTORY.search(f"measured in session {number}") and HISTORY.search(f"as issue #{number} asked")
    assert not HISTORY.search(URL.sub("", "see https://github.com/x/y/issues/3#4 and color: #fff"))
