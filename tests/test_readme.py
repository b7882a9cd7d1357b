"""Every command block of the README and the docs runs, in order, on the demo data: a documented command cannot
fail unnoticed.

The blocks run in a scratch folder that links the repository's examples, data, Makefile and .venv, so
`make demo` and `runs/...` paths work as written while the runs stay out of the checkout. bash blocks run with
`set -euo pipefail` and a `curl` that fails on an HTTP error; a `tunelab serve` line is started in the
background and waited for (its /readyz), and stopped (SIGTERM) after the document's last block. A block preceded by
`<!-- readme-test: skip REASON -->` is not run (a multi-machine setup, the test suite itself); the reason is
required and printed.

`make demo` trains as documented (the int8 export and the monitor after it need its model); every other
`tunelab train` or `tunelab tune` line gets `QUICK` appended (two steps instead of a hundred, a search of two
trials instead of four, a causal LM's evaluation generating two short answers), and an app's `build` gets
`APP_QUICK` (the least training): this test checks that the commands work as written, not what they reach
(benchmarks/ and the apps' own tests measure that), and keeps the suite fast.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*readme-test:\s*skip\s+(?P<skip>[^>]*?)\s*-->\s*\n)?^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n"
                   r"(?P<code>.*?)^(?P=indent)```", re.S | re.M)
LINKED = ["examples", "data", "Makefile", "pyproject.toml", "scripts", "tunelab", ".venv"]
QUICK = "train.max_steps=2 train.eval_every=2 evaluate.generate_examples=2 evaluate.max_new_tokens=8"
APP_QUICK = {"support": "retriever.epochs=1", "recommend": "tower.epochs=0 sequence.epochs=2"}
PRELUDE = r"""
set -euo pipefail
curl() { command curl --silent --show-error --fail-with-body --max-time 120 "$@"; }
ready() {  # ready PID PORT: wait until the server answers /readyz, or fail if it died
  for _ in $(seq 1 1200); do
    command curl -sf "localhost:$2/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || { echo "tunelab serve exited before it was ready" >&2; return 1; }
    sleep 0.1
  done
  echo "tunelab serve was not ready after 120 s" >&2; return 1
}
"""

@dataclass
class Block:
    document: str
    line: int
    lang: str
    code: str
    skip: str | None


def blocks(document: str) -> list[Block]:
    text = (REPO / document).read_text(encoding="utf-8")
    return [Block(document, text.count("\n", 0, m.start("code")), m.group("lang"), textwrap.dedent(m.group("code")),
                  m.group("skip")) for m in FENCE.finditer(text) if m.group("lang") in ("bash", "sh", "python")]


def served_port(command: str) -> int:
    """The port a `tunelab serve` command listens on (the server's default without --port)."""
    port = re.search(r"--port\s+(\d+)", command)
    return int(port.group(1)) if port else 8000


def as_script(code: str) -> str:
    """The block as a bash script: `tunelab serve` lines in the background, each waited for."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        command = line.split("#")[0].strip() if not line.lstrip().startswith("curl") else line.strip()
        if command.startswith("tunelab serve"):  # in the background, until the document's last block has run
            out += [f"{command.rstrip('&').strip()} >>\"$READMETEST_SERVERS.log\" 2>&1 & echo $! >> \"$READMETEST_SERVERS\"",
                    f"ready $! {served_port(command)}"]
        elif command.startswith(("tunelab train ", "tunelab tune ")):
            out.append(f"{command} {QUICK}" + (" tune.n_trials=2" if command.startswith("tunelab tune ") else ""))
        elif re.match(r"tunelab app (\w+) build ", command) and command.split()[2] in APP_QUICK:
            out.append(f"{command} {APP_QUICK[command.split()[2]]}")
        elif command in ("make test", "make install"):
            out.append(f": {command} is this test suite / already done")
        else:
            out.append(line)
    return PRELUDE + "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        if (REPO / name).exists():
            (folder / name).symlink_to(REPO / name)
    return folder


def test_every_skipped_block_says_why():
    for document in DOCUMENTS:
        for block in blocks(document):
            assert block.skip is None or len(block.skip.split()) >= 3, f"{document}:{block.line}: say why it is skipped"


def test_documents_that_run_at_the_same_time_serve_on_ports_of_their_own():
    """make test runs documents on two workers at once: two documents serving on one port would collide."""
    owner: dict[int, str] = {}
    for document in DOCUMENTS:
        for block in blocks(document):
            for line in ([] if block.skip else block.code.replace("\\\n", " ").splitlines()):
                if line.strip().startswith("tunelab serve"):
                    port = served_port(line)
                    assert owner.setdefault(port, document) == document, f"{document} and {owner[port]} both serve on {port}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_commands_run_in_order(document, workdir):
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "TUNELAB_DATA": os.environ.get("TUNELAB_DATA", str(REPO.parent / "shared" / "data"))}
    env.pop("PYTHONPATH", None)  # the blocks import tunelab as a user's shell would
    servers = workdir / "servers.pids"
    env["READMETEST_SERVERS"] = str(servers)
    skipped = []
    try:
        _run_blocks(document, workdir, env, skipped)
    finally:
        for pid in (servers.read_text().split() if servers.exists() else []):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    print("\n".join(["blocks not run:", *skipped]) if skipped else "every block ran")


def _run_blocks(document: str, workdir, env: dict, skipped: list) -> None:
    for block in blocks(document):
        if block.skip:
            skipped.append(f"{document}:{block.line}: {block.skip}")
            continue
        if block.lang == "python":
            command = [sys.executable, "-c", block.code]
        else:
            command = ["bash", "-c", as_script(block.code)]
        started = time.monotonic()
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        print(f"{document}:{block.line}: {time.monotonic() - started:.1f} s")
        assert done.returncode == 0, (f"{document}:{block.line}: the {block.lang} block failed (exit {done.returncode})"
                                      f":\n{block.code}\n--- output ---\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
