"""The JSONL files evaluation reads: one JSON object per line, each with an ``id``.

Errors name the file and line: a line that is not JSON, not an object, without an ``id``, with
an id that is not a string or an integer, or with an id seen before. Blank lines are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError

Id = str | int


@dataclass(frozen=True)
class Record:
    id: Id
    line: int
    data: dict


def show_id(record_id: Id) -> str:
    """An id as the user wrote it in JSON ("a" or 7), so a string "7" and a number 7 stay apart."""
    return json.dumps(record_id, ensure_ascii=False)


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line; one clear error when the file cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KitError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise KitError(f"{what} {path}: is a directory, not a JSONL file") from None
    except OSError as e:
        raise KitError(f"{what} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        line = text_line_of_byte(Path(path), e.start)
        raise KitError(f"{path}:{line}: not UTF-8 text") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def text_line_of_byte(path: Path, offset: int) -> int:
    return Path(path).read_bytes()[:offset].count(b"\n") + 1


def parse_line(path: Path, n: int, line: str) -> dict:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise KitError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise KitError(f"{path}:{n}: expected a JSON object like {{\"id\": ..., ...}}, got {type_name(data)}")
    return data


def read_records(path: Path, what: str, shape: str) -> list[Record]:
    """Every record of a JSONL file, in order; ``shape`` is shown when a line lacks its id."""
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for n, line in read_lines(path, what):
        data = parse_line(path, n, line)
        if "id" not in data:
            raise KitError(f"{path}:{n}: no \"id\" (each line is {shape})")
        record_id = data["id"]
        if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
            raise KitError(f"{path}:{n}: \"id\" must be a string or an integer, got {type_name(record_id)}")
        key = show_id(record_id)
        if key in first_line:
            raise KitError(f"{path}:{n}: duplicate id {show_id(record_id)} (first on line {first_line[key]})")
        first_line[key] = n
        records.append(Record(record_id, n, data))
    return records


def type_name(value) -> str:
    """JSON's name for a Python value from json.loads."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
