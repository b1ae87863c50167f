"""The predictions file ``generate`` writes: resumable, and never left with a broken line.

Each answer is one line ``{"id", "fields", "raw"}`` (plus ``"parse_error"`` when the answer held
no JSON object), appended with a single ``write`` on an O_APPEND descriptor, so that a run killed
at any moment leaves complete lines and at most a partial last one without its newline. On the
next run that partial tail is cut off (and reported), and every id already on a line is skipped.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from kit.errors import KitError
from kit.eval.records import show_id


def answered(path: Path) -> tuple[set[str], int]:
    """Ids (as ``show_id`` keys) already answered in ``path``, and how many bytes of a partial
    last line were cut off (0 when none). A broken line in the middle is an error: the file is
    not one that generate wrote."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set(), 0
    except IsADirectoryError:
        raise KitError(f"--out {path}: is a directory") from None
    except OSError as e:
        raise KitError(f"--out {path}: cannot read it ({e.strerror})") from None
    complete = data[: data.rfind(b"\n") + 1]
    cut = len(data) - len(complete)
    ids: set[str] = set()
    for n, line in enumerate(complete.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ids.add(show_id(record["id"]))
        except (ValueError, TypeError, KeyError):
            raise KitError(f"{path}:{n}: not a line that `kit eval generate` writes ({{\"id\", \"fields\", \"raw\"}}); "
                           f"give another --out or move the file away") from None
    if cut:
        try:
            os.truncate(path, len(complete))
        except OSError as e:
            raise KitError(f"--out {path}: cannot cut off its partial last line ({e.strerror})") from None
    return ids, cut


class Appender:
    """Appends whole lines from several threads; each line is one write(2)."""

    def __init__(self, path: Path):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise KitError(f"--out {path}: cannot write it ({e.strerror})") from None
        self.path = path
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self.lock:
            try:
                written = os.write(self.fd, line)
            except OSError as e:
                raise KitError(f"--out {self.path}: cannot write it ({e.strerror})") from None
            if written != len(line):  # a full disk: leave no partial line behind
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
                raise KitError(f"--out {self.path}: short write ({written} of {len(line)} bytes); is the disk full?")

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
