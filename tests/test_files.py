"""Atomic writes (tunelab/files.py)."""

import threading

from tunelab.files import write_text_atomic


def test_writers_of_one_file_at_once_never_rename_each_others_temp_file(tmp_path):
    """Search workers sharing a study write the same report; a shared temp name made one of them fail."""
    path, errors = tmp_path / "report.html", []

    def write(n: int) -> None:
        try:
            for i in range(200):
                write_text_atomic(path, f"writer {n} pass {i}\n" * 50)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = path.read_text()
    assert text.startswith("writer ") and len(text.splitlines()) == 50
    assert len(set(text.splitlines())) == 1  # one writer's whole text, not a mix
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left
