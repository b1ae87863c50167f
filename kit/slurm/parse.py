"""Parsing what Slurm prints: time limits, hostlists, `scontrol ... -o` lines and GPU GRES."""

from __future__ import annotations

import itertools
import re

from kit.errors import KitError

# --- time limits ---------------------------------------------------------------------------

_UNLIMITED = {"UNLIMITED", "INFINITE", "-1"}
_TIME_RE = re.compile(
    r"""^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?   # D-H[:M[:S]]
        |(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$                      # M | M:S | H:M:S
    """,
    re.VERBOSE,
)


def parse_time_limit(text: str) -> int | None:
    """Parse a Slurm time limit into whole minutes; None means UNLIMITED/INFINITE.

    Accepts Slurm's formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`,
    `UNLIMITED`, `INFINITE` (case-insensitive). Seconds round up to the next minute, as Slurm does.
    """
    if not isinstance(text, str):
        raise KitError(f"invalid Slurm time limit {text!r}: expected a string like 2-00:00:00")
    s = text.strip()
    if s.upper() in _UNLIMITED:
        return None
    m = _TIME_RE.match(s)
    if m is None:
        raise KitError(
            f"invalid Slurm time limit {text!r}: use D-HH:MM:SS, HH:MM:SS, MM:SS, minutes "
            "or UNLIMITED"
        )
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "days" in g:
        minutes = (g["days"] * 24 + g["dh"]) * 60 + g.get("dm", 0)
        seconds = g.get("ds", 0)
    elif "c" in g:  # H:M:S
        minutes = g["a"] * 60 + g["b"]
        seconds = g["c"]
    elif "b" in g:  # M:S
        minutes, seconds = g["a"], g["b"]
    else:  # M
        minutes, seconds = g["a"], 0
    return -(-(minutes * 60 + seconds) // 60)  # whole minutes, partial ones round up


def format_minutes(minutes: int | None) -> str:
    """Format minutes the way sbatch accepts them: `D-HH:MM:SS` from one day on, else `HH:MM:SS`.

    None formats as `UNLIMITED`.
    """
    if minutes is None:
        return "UNLIMITED"
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0:
        raise ValueError(f"minutes must be a non-negative int, got {minutes!r}")
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours:02d}:{mins:02d}:00"


# --- hostlists -----------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise KitError(f"invalid hostlist {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise KitError(f"invalid hostlist {text!r}: unbalanced '['")
    out.append("".join(cur))
    return out


def _expand_brackets(body: str, whole: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        m = _RANGE_RE.match(part.strip())
        if m is None:
            raise KitError(f"invalid hostlist {whole!r}: bad range {part!r}")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            values.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise KitError(f"invalid hostlist {whole!r}: range {part!r} runs backwards")
        width = len(lo_s)  # Slurm pads to the width of the lower bound: n[01-10], n[009-011]
        values.extend(str(i).zfill(width) for i in range(lo, hi + 1))
    return values


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist like `qgpu[2001-2003,3005],qnode0001` into host names.

    Follows `scontrol show hostnames`: order is kept, duplicates are kept, zero padding follows
    the lower bound, and several bracket groups give their product (`a[1-2]b[3-4]`).
    `""` and `(null)` give []. Raises KitError on malformed input. One liberty: text after the
    last bracket group (`n[1-2]-ib`) is kept as a suffix, where Slurm 22.05 rejects it.
    """
    text = (text or "").strip()
    if text in ("", "(null)"):
        return []
    hosts: list[str] = []
    for item in _split_top(text):
        item = item.strip()
        if not item:
            continue
        pieces = re.split(r"(\[[^\[\]]*\])", item)
        choices: list[list[str]] = []
        for piece in pieces:
            if piece.startswith("[") and piece.endswith("]"):
                choices.append(_expand_brackets(piece[1:-1], text))
            elif piece:
                if "[" in piece or "]" in piece:
                    raise KitError(f"invalid hostlist {text!r}")
                choices.append([piece])
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


# --- scontrol output -----------------------------------------------------------------------

_KEY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(.*)$")


def parse_kv_line(line: str) -> dict[str, str]:
    """Parse one `scontrol show ... -o` line into {key: value}.

    Values may contain spaces (`OS=Linux 6.1 #1 SMP ...`, `Reason=...`): a word that does not
    start with `Key=` continues the previous value.
    """
    out: dict[str, str] = {}
    last: str | None = None
    for word in line.split():
        m = _KEY_RE.match(word)
        if m:
            last = m.group(1)
            out[last] = m.group(2)
        elif last is not None:
            out[last] = f"{out[last]} {word}"
    return out


def none_if_null(value: str | None) -> str | None:
    if value is None or value in ("(null)", "N/A", "NONE", ""):
        return None
    return value


def parse_gres(text: str | None) -> dict[str, int]:
    """GPU GRES of a node as {type: count}; an untyped `gpu:4` is {"": 4}.

    Handles `gpu:a100:4`, `gpu:a100:4(S:0-1)`, `gpu:a100:2,gpu:h100:4`, `gpu:4`, `gpu`,
    `(null)`; non-GPU GRES (mps, shard, nic) are left out.
    """
    gres: dict[str, int] = {}
    value = none_if_null(text)
    if value is None:
        return gres
    value = re.sub(r"\([^)]*\)", "", value)  # socket bindings: (S:0-1), (S:0,1)
    for item in value.split(","):
        parts = [p for p in item.strip().split(":") if p != "no_consume"]
        if not parts or parts[0] != "gpu":
            continue
        gtype, count = "", 1
        if len(parts) == 2:
            if parts[1].isdigit():
                count = int(parts[1])
            else:
                gtype = parts[1]
        elif len(parts) >= 3:
            gtype = parts[1]
            count = int(parts[2]) if parts[2].isdigit() else 1
        gres[gtype] = gres.get(gtype, 0) + count
    return gres


def int_or(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def features(value: str | None) -> set[str]:
    value = none_if_null(value)
    return {f for f in value.split(",") if f} if value else set()

