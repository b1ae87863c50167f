"""Several prediction files (a base model, a fine-tuned adapter, ...) scored on the same gold
file, side by side: per field and micro/macro, each run's precision, recall and F1 and its
difference from the first run (the baseline)."""

from __future__ import annotations

from pathlib import Path

from kit.errors import KitError
from kit.eval.extract import Report, read_fields, score

METRICS = ("precision", "recall", "f1")


def labels_for(preds: list[Path], labels: list[str]) -> list[str]:
    """--label per --pred, in order; default: each file's name without .jsonl."""
    if len(preds) < 2:
        raise KitError("--pred: give at least two prediction files to compare (the first is the baseline)")
    if labels and len(labels) != len(preds):
        raise KitError(f"--label: give one per --pred ({len(preds)}), got {len(labels)}")
    out = list(labels) or [Path(p).name.removesuffix(".jsonl") for p in preds]
    if len(set(out)) != len(out):
        raise KitError(f"--label: labels must differ, got {', '.join(out)}" + ("" if labels else " (from the file names; set --label)"))
    return out


def delta(run: dict, base: dict) -> dict:
    return {m: run[m] - base[m] for m in METRICS}


def comparison(reports: dict[str, Report]) -> dict:
    """The side-by-side table as data: rows are fields, then micro and macro."""
    labels = list(reports)
    base = labels[0]
    as_dicts = {label: r.as_dict() for label, r in reports.items()}
    names: dict[str, None] = {}
    for d in as_dicts.values():
        names.update(dict.fromkeys(d["fields"]))

    def row(get) -> dict:
        runs = {label: {m: get(as_dicts[label])[m] for m in METRICS} for label in labels}
        return {**runs, "delta": {label: delta(runs[label], runs[base]) for label in labels[1:]}}

    zero = {m: 0.0 for m in METRICS}
    fields = {}
    for name in names:
        support = max(d["fields"].get(name, {}).get("support", 0) for d in as_dicts.values())
        fields[name] = {"support": support, **row(lambda d, name=name: d["fields"].get(name, zero))}
    return {
        "labels": labels,
        "baseline": base,
        "micro": row(lambda d: d["micro"]),
        "macro": row(lambda d: d["macro"]),
        "fields": fields,
        "records": {label: d["records"] for label, d in as_dicts.items()},
    }


def compare(gold_path: Path, preds: list[Path], labels: list[str]) -> dict:
    """`kit eval compare`: every prediction file against one gold file (read once)."""
    names = labels_for(preds, labels)
    gold = read_fields(gold_path, "--gold")
    return comparison({label: score(gold, read_fields(p, "--pred")) for label, p in zip(names, preds)})
