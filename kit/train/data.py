"""Training data: JSONL records (chat, instruction, completion) -> token ids with the prompt masked.

Reading and checking records is light (json only) so a login node can check a data file before
submitting. Encoding takes a Hugging Face tokenizer: chat and instruction records go through the
model's chat template; only the assistant turns (the output, the completion) keep their labels, every
other token is -100 and does not count in the loss.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError

IGNORE = -100  # the label value the loss skips


@dataclass(frozen=True)
class Record:
    where: str  # "FILE:LINE", for errors
    data: dict


def read_records(paths: list[str], fmt: str) -> list[Record]:
    """Every non-blank line of every file, parsed and checked for ``fmt``; errors name file and line."""
    records = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise KitError(f"{path}: cannot read the data file: {e.strerror}") from None
        except UnicodeDecodeError:
            raise KitError(f"{path}: not a UTF-8 text file") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise KitError(f"{where}: not a JSON object: {e.msg} (column {e.colno})") from None
            check_record(data, fmt, where)
            records.append(Record(where, data))
    if not records:
        raise KitError(f"{', '.join(paths)}: no records (one JSON object per line)")
    return records


REQUIRED = {"instruction": ("instruction", "output"), "completion": ("prompt", "completion")}


def check_record(data, fmt: str, where: str) -> None:
    if not isinstance(data, dict):
        raise KitError(f"{where}: a {fmt} record must be a JSON object, got {type(data).__name__}")
    if fmt == "chat":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise KitError(f"{where}: a chat record needs \"messages\": a non-empty list of {{\"role\", \"content\"}}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise KitError(f"{where}: messages[{i}] must be {{\"role\": string, \"content\": string}}")
        roles = [m["role"] for m in messages]
        if "assistant" not in roles:
            raise KitError(f"{where}: a chat record needs an \"assistant\" message to learn from (roles: {', '.join(roles)})")
        if "user" not in roles[:roles.index("assistant")]:
            raise KitError(f"{where}: a chat record needs a \"user\" message before the first \"assistant\" one "
                           f"(roles: {', '.join(roles)})")
        return
    for key in REQUIRED[fmt]:
        if not isinstance(data.get(key), str):
            article = "an" if fmt == "instruction" else "a"
            raise KitError(f"{where}: {article} {fmt} record needs \"{key}\" (a string)")
    if fmt == "instruction" and not isinstance(data.get("input", ""), str):
        raise KitError(f"{where}: \"input\" must be a string")


def split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, validation): a seeded random ``fraction`` of the records (at least one) held out."""
    if len(records) < 2:
        raise KitError(f"data.validation_split: needs at least 2 records, the train data has {len(records)}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = min(len(records) - 1, max(1, round(fraction * len(records))))
    held = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def to_messages(data: dict, fmt: str) -> list[dict]:
    if fmt == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
    prompt = data["instruction"] + (f"\n\n{data['input']}" if data.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": data["output"]}]


def encode(record: Record, tokenizer, fmt: str, seq_len: int, model: str) -> dict:
    """{"input_ids", "labels"} (lists of ints, at most seq_len long)."""
    if fmt == "completion":
        prompt, text = record.data["prompt"], record.data["prompt"] + record.data["completion"]
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        spans = [(len(prompt), len(text))]
        ids, labels = _label(enc, spans)
        if tokenizer.eos_token_id is not None:
            ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    else:
        text, spans = render_chat(to_messages(record.data, fmt), tokenizer, record.where, model)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels = _label(enc, spans)
    return {"input_ids": ids[:seq_len], "labels": labels[:seq_len]}


def render_chat(messages: list[dict], tokenizer, where: str, model: str) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation through the chat template, and the character spans of the assistant
    turns (each turn's text as the template adds it after the generation prompt, end token included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise KitError(f"{model}: the tokenizer has no chat template; use data.format: completion")

    def render(msgs, gen):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja2's TemplateError, raise_exception() in the template
            raise KitError(f"{where}: {model}'s chat template refuses this record: {e}") from None

    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if upto.startswith(before) and full.startswith(upto):
            spans.append((len(before), len(upto)))
    if not spans:
        raise KitError(f"{where}: {model}'s chat template does not render the assistant turn after the prompt; "
                       "cannot tell the answer from the prompt")
    return full, spans


def _label(enc, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ids = list(enc["input_ids"])
    labels = []
    for token_id, (start, end) in zip(ids, enc["offset_mapping"]):
        inside = end > start and any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else IGNORE)
    return ids, labels


def build_examples(records: list[Record], tokenizer, fmt: str, seq_len: int, packing: bool, model: str) -> list[dict]:
    """Encoded examples; records whose answer is cut off entirely by seq_len are dropped."""
    examples = [encode(r, tokenizer, fmt, seq_len, model) for r in records]
    examples = [e for e in examples if any(label != IGNORE for label in e["labels"])]
    if not examples:
        raise KitError(f"training.seq_len {seq_len}: every record's answer lies beyond it; nothing to learn")
    return pack(examples, seq_len) if packing else examples


def pack(examples: list[dict], seq_len: int) -> list[dict]:
    """Concatenate the examples and cut the stream into seq_len blocks (the last one may be shorter).
    Records end with the end-of-turn token, so a block may hold several; attention is not reset."""
    ids = [t for e in examples for t in e["input_ids"]]
    labels = [t for e in examples for t in e["labels"]]
    blocks = [{"input_ids": ids[i:i + seq_len], "labels": labels[i:i + seq_len]} for i in range(0, len(ids), seq_len)]
    return [b for b in blocks if any(label != IGNORE for label in b["labels"])]


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad a micro-batch; returns plain lists (the trainer makes tensors)."""
    width = max(len(e["input_ids"]) for e in examples)
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    for e in examples:
        n = len(e["input_ids"])
        out["input_ids"].append(e["input_ids"] + [pad_id] * (width - n))
        out["labels"].append(e["labels"] + [IGNORE] * (width - n))
        out["attention_mask"].append([1] * n + [0] * (width - n))
    return out
