"""A job's log (the batch script's and the engine's output): its tail, and following it."""

from __future__ import annotations

from collections import deque
from typing import Callable

from kit.errors import KitError
from kit.jobs.record import JobRecord
from kit.jobs.watch import watch

LOG_TAIL_LINES = 20


def tail(record: JobRecord, lines: int = LOG_TAIL_LINES) -> tuple[list[str], int]:
    """The last ``lines`` lines and the byte offset they end at, read in one pass, so that a
    follower starting there misses nothing appended meanwhile."""
    try:
        with record.log_path.open("rb") as f:
            last = deque(f, maxlen=lines)
            offset = f.tell()
    except OSError:
        return [], 0
    return [line.decode(errors="replace").rstrip("\n") for line in last], offset


def log_tail(record: JobRecord, lines: int = LOG_TAIL_LINES) -> list[str]:
    return tail(record, lines)[0]


def read_from(record: JobRecord, offset: int) -> tuple[str, int]:
    """Text appended since ``offset``, and the new offset."""
    try:
        with record.log_path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return "", offset
    return chunk.decode(errors="replace"), offset + len(chunk)


def show(record: JobRecord, write: Callable[[str], None], *, lines: int = 0, follow: bool = False,
         interval: float = 1.0) -> None:
    """Write the log (or its last ``lines``) through ``write``; with ``follow``, keep writing
    until the job ends, then what it wrote last."""
    if not record.log_path.exists() and not follow:
        raise KitError(f"job {record.job_id} has no log yet ({record.log_path}): it may still be queued")
    offset = 0
    if lines:
        last, offset = tail(record, lines)
        for line in last:
            write(line + "\n")
    text, offset = read_from(record, offset)
    if text:
        write(text)
    if not follow:
        return
    for state in watch(record, interval=interval):
        text, offset = read_from(record, offset)  # after the state: lines written before the end are kept
        if text:
            write(text)
        if state.ended:
            return
