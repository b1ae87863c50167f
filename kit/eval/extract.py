"""Precision, recall and F1 of extracted fields against a gold file, per field, micro and macro.

Both files hold ``{"id": ..., "fields": {NAME: VALUE or [VALUES]}}`` lines (other keys, like the
raw answer ``generate`` keeps, are ignored). Per record and field, the predicted and gold values
are multisets of normalised texts (``normalize``): true positives are their intersection (a value
counts as often as it appears on both sides: predicting "a" twice against one gold "a" is one TP
and one FP), false positives the predicted rest, false negatives the gold rest. A missing, null or
empty prediction is only false negatives. Field names are compared exactly.

An id on one side only is reported and scored as if the other side had an empty record: an id
only in the gold file makes false negatives, one only in the predictions false positives.

0/0 is 0.0: precision with nothing predicted, recall with nothing in gold, F1 when both are 0.
Support is a field's number of gold values. Micro averages pool the counts of every field (a
field only the predictions have still adds its false positives); macro is the unweighted mean
of the per-field precision, recall and F1 over fields with gold support (macro F1 is the mean of
the F1s, not the F1 of the means).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError
from kit.eval.normalize import BadValue, field_values
from kit.eval.records import read_records, show_id, type_name

SHAPE = '{"id": ..., "fields": {NAME: VALUE or [VALUES]}}'


def ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, pred: Counter, gold: Counter) -> None:
        hit = sum((pred & gold).values())
        self.tp += hit
        self.fp += sum(pred.values()) - hit
        self.fn += sum(gold.values()) - hit

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return f1(self.precision, self.recall)

    def scores(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}

    def as_dict(self) -> dict:
        return {**self.scores(), "support": self.support, "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass
class Report:
    fields: dict[str, Counts]
    gold_records: int
    pred_records: int
    only_gold: list = field(default_factory=list)  # ids without a prediction
    only_pred: list = field(default_factory=list)  # ids the gold file lacks

    @property
    def micro(self) -> Counts:
        total = Counts()
        for c in self.fields.values():
            total.tp, total.fp, total.fn = total.tp + c.tp, total.fp + c.fp, total.fn + c.fn
        return total

    @property
    def macro(self) -> dict:
        scored = [c for c in self.fields.values() if c.support]
        n = len(scored)
        mean = (lambda xs: sum(xs) / n) if n else (lambda xs: 0.0)
        return {"precision": mean([c.precision for c in scored]), "recall": mean([c.recall for c in scored]),
                "f1": mean([c.f1 for c in scored]), "fields": n}

    def as_dict(self) -> dict:
        micro = self.micro
        return {
            "micro": {**micro.scores(), "support": micro.support, "tp": micro.tp, "fp": micro.fp, "fn": micro.fn},
            "macro": self.macro,
            "fields": {name: c.as_dict() for name, c in self.fields.items()},
            "records": {"gold": self.gold_records, "pred": self.pred_records,
                        "only_gold": self.only_gold, "only_pred": self.only_pred},
        }


Values = dict[str, Counter]


def read_fields(path: Path, what: str) -> dict[str, tuple[object, Values]]:
    """id key -> (id, {field: multiset of normalised values}) for every line of a file."""
    out: dict[str, tuple[object, Values]] = {}
    for record in read_records(path, what, SHAPE):
        fields = record.data.get("fields")
        if "fields" not in record.data:
            raise KitError(f"{path}:{record.line}: no \"fields\" (each line is {SHAPE})")
        if not isinstance(fields, dict):
            raise KitError(f"{path}:{record.line}: \"fields\" must be an object of NAME: VALUE, got {type_name(fields)}")
        values: Values = {}
        for name, value in fields.items():
            try:
                values[name] = field_values(value)
            except BadValue as e:
                raise KitError(f"{path}:{record.line}: fields.{name}: {e}") from None
        out[show_id(record.id)] = (record.id, values)
    return out


def score(gold: dict[str, tuple[object, Values]], pred: dict[str, tuple[object, Values]]) -> Report:
    names: dict[str, None] = {}  # gold's field order first, then fields only predictions have
    for side in (gold, pred):
        for _, values in side.values():
            names.update(dict.fromkeys(values))
    counts = {name: Counts() for name in names}
    empty: Counter = Counter()
    for key in gold.keys() | pred.keys():
        gold_values = gold[key][1] if key in gold else {}
        pred_values = pred[key][1] if key in pred else {}
        for name in gold_values.keys() | pred_values.keys():
            counts[name].add(pred_values.get(name, empty), gold_values.get(name, empty))
    return Report(
        fields=counts,
        gold_records=len(gold),
        pred_records=len(pred),
        only_gold=[gold[k][0] for k in gold if k not in pred],
        only_pred=[pred[k][0] for k in pred if k not in gold],
    )


def evaluate(gold_path: Path, pred_path: Path) -> Report:
    """`kit eval extract`: score a prediction file against a gold file."""
    gold = read_fields(gold_path, "--gold")
    return score(gold, read_fields(pred_path, "--pred"))
