"""`kit eval`: extraction scores on hand-computed cases, bad input, the generation runner against a
recording OpenAI-compatible server on 127.0.0.1 (retries, resume, fenced and unparsable answers)
and against a tiny local model, compare, and recall@k."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from httpstub import NetworkFault
from kitrun import kit
from test_client import RecordingChat

from kit.eval.answer import parse_answer
from kit.eval.extract import read_fields, score
from kit.eval.normalize import field_values, normalize_text
from kit.eval.retrieval import recall_at_k


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- normalisation ---------------------------------------------------------------------------

def test_values_are_compared_after_nfkc_casefold_whitespace_and_edge_punctuation():
    assert normalize_text("ＡＮＡ\u00a0 Lee") == "ana lee"  # full-width letters, NBSP (NFKC), case
    assert normalize_text('  "Chicago." ') == "chicago"  # quotes and the full stop at the ends
    assert normalize_text("(Évanston, IL)") == "évanston, il"  # inner punctuation stays
    assert normalize_text("U.S.") == "u.s"
    assert normalize_text("Straße") == normalize_text("STRASSE") == "strasse"  # case-fold, not lower()
    assert normalize_text("ﬁle") == "file"  # the ligature (NFKC)
    assert normalize_text("$100") == "$100"  # a symbol is not punctuation
    assert normalize_text("« — »") == ""  # only punctuation: no value
    assert field_values([3, 3.0, "3", True, "TRUE", None, "", 2.5, "2.50"]) == {"3": 3, "true": 2, "2.5": 1, "2.50": 1}


# --- extract: hand-computed --------------------------------------------------------------------

GOLD = [
    {"id": "a", "fields": {"name": "Ana Lee", "city": ["Chicago", "Evanston"], "amount": 3}},
    {"id": "b", "fields": {"name": "Bo", "city": "Paris", "amount": None}},
    {"id": "c", "fields": {"name": "Cy", "city": ["Rome", "Rome"]}},
    {"id": 7, "fields": {"name": "Seven"}},
]
PRED = [
    # name TP; city: a multiset, order ignored, the repeated Chicago is one TP and one FP; 3.0 == 3
    {"id": "a", "fields": {"name": " ana  LEE.", "city": ["evanston", "Chicago", "chicago"], "amount": 3.0}, "raw": "x"},
    # name FP+FN; city empty: FN; a field gold does not have: FP; amount: neither side has a value
    {"id": "b", "fields": {"name": "Bob", "city": "", "extra": True, "amount": None}},
    # Rome once against Rome twice: 1 TP, 1 FN; name missing: FN
    {"id": "c", "fields": {"city": ["ROME"]}},
    # only in the predictions: FP; the string "7" is not the number 7 (gold's 7 is then FN)
    {"id": "7", "fields": {"name": "Seven"}},
]


def test_extract_scores_a_hand_computed_case(tmp_path):
    gold, pred = jsonl(tmp_path / "gold.jsonl", GOLD), jsonl(tmp_path / "pred.jsonl", PRED)
    r = kit("eval", "extract", "--pred", str(pred), "--gold", str(gold), "--json")
    assert r.code == 0, r.err
    out = r.json()
    f = out["fields"]
    # name: a TP; b Bob/Bo FP+FN; c FN; "7" FP; 7 FN -> tp 1, fp 2, fn 3
    assert {k: f["name"][k] for k in ("tp", "fp", "fn", "support")} == {"tp": 1, "fp": 2, "fn": 3, "support": 4}
    assert f["name"]["precision"] == pytest.approx(1 / 3) and f["name"]["recall"] == pytest.approx(1 / 4)
    assert f["name"]["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    # city: a 2 TP + 1 FP; b 1 FN; c 1 TP + 1 FN -> tp 3, fp 1, fn 2
    assert {k: f["city"][k] for k in ("tp", "fp", "fn", "support")} == {"tp": 3, "fp": 1, "fn": 2, "support": 5}
    assert f["city"]["precision"] == pytest.approx(0.75) and f["city"]["recall"] == pytest.approx(0.6)
    assert {k: f["amount"][k] for k in ("tp", "fp", "fn", "support")} == {"tp": 1, "fp": 0, "fn": 0, "support": 1}
    # a field only the predictions have: support 0, its FP counts in micro but it is not in macro
    assert f["extra"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "tp": 0, "fp": 1, "fn": 0}
    assert list(f) == ["name", "city", "amount", "extra"]  # gold's order, then prediction-only fields
    micro = out["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (5, 4, 5)
    assert micro["precision"] == pytest.approx(5 / 9) and micro["recall"] == pytest.approx(5 / 10)
    assert micro["f1"] == pytest.approx(2 * (5 / 9) * 0.5 / (5 / 9 + 0.5))
    macro = out["macro"]
    assert macro["fields"] == 3
    assert macro["precision"] == pytest.approx((1 / 3 + 0.75 + 1) / 3)
    assert macro["recall"] == pytest.approx((1 / 4 + 0.6 + 1) / 3)
    assert macro["f1"] == pytest.approx((f["name"]["f1"] + f["city"]["f1"] + 1.0) / 3)  # mean of F1s
    assert out["records"] == {"gold": 4, "pred": 4, "only_gold": [7], "only_pred": ["7"]}

    human = kit("eval", "extract", "--pred", str(pred), "--gold", str(gold))
    assert human.code == 0, human.err
    assert "micro" in human.out and "macro" in human.out and "3 fields" in human.out
    assert "1 gold id(s) without a prediction (scored as false negatives): 7" in human.out
    assert 'not in the gold file (scored as false positives): "7"' in human.out


def test_repeated_values_count_as_often_as_they_appear(tmp_path):
    gold = read_fields(jsonl(tmp_path / "g.jsonl", [{"id": 1, "fields": {"tags": ["x", "x", "y"]}}]), "--gold")
    pred = read_fields(jsonl(tmp_path / "p.jsonl", [{"id": 1, "fields": {"tags": ["X", "x.", "x"]}}]), "--pred")
    tags = score(gold, pred).fields["tags"]
    assert (tags.tp, tags.fp, tags.fn) == (2, 1, 1)  # two of the three x match the two gold x


def test_zero_over_zero_is_zero_and_nothing_predicted_is_all_false_negatives(tmp_path):
    gold = read_fields(jsonl(tmp_path / "g.jsonl", [{"id": 1, "fields": {"a": "x", "b": ["y", "z"]}}]), "--gold")
    empty = score(gold, read_fields(jsonl(tmp_path / "p.jsonl", [{"id": 1, "fields": {}}]), "--pred"))
    assert empty.fields["b"].as_dict() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "tp": 0, "fp": 0, "fn": 2}
    assert empty.as_dict()["micro"]["fn"] == 3 and empty.macro["f1"] == 0.0
    missing = score(gold, {})  # no prediction file lines at all: the id is only in gold
    assert missing.as_dict()["micro"]["fn"] == 3 and missing.only_gold == [1]
    nothing = score({}, {})
    assert nothing.as_dict()["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "tp": 0, "fp": 0, "fn": 0}
    assert nothing.macro == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "fields": 0}


@pytest.mark.parametrize("lines_, message", [
    (['{"id": 1, "fields": {}}', '{"id": 2, "fields": {'], r"G.jsonl:2: not valid JSON (Expecting property name"),
    (['{"fields": {"a": "x"}}'], r'G.jsonl:1: no "id" (each line is {"id": ..., "fields": {NAME: VALUE or [VALUES]}})'),
    (['{"id": "x", "fields": {}}', "", '{"id": "x", "fields": {}}'], r'G.jsonl:3: duplicate id "x" (first on line 1)'),
    (['{"id": [1], "fields": {}}'], r'G.jsonl:1: "id" must be a string or an integer, got a list'),
    (['["not", "an", "object"]'], r"G.jsonl:1: expected a JSON object"),
    (['{"id": 1}'], r'G.jsonl:1: no "fields"'),
    (['{"id": 1, "fields": ["a"]}'], r'G.jsonl:1: "fields" must be an object of NAME: VALUE, got a list'),
    (['{"id": 1, "fields": {"a": {"b": 1}}}'], r"G.jsonl:1: fields.a: expected a string, number, boolean, null or a list of them, got an object"),
])
def test_bad_gold_files_are_one_clear_line(tmp_path, lines_, message):
    gold = tmp_path / "G.jsonl"
    gold.write_text("\n".join(lines_) + "\n")
    pred = jsonl(tmp_path / "P.jsonl", [])
    r = kit("eval", "extract", "--pred", str(pred), "--gold", str(gold))
    assert r.code == 2 and r.error_line.startswith(f"kit: error: {tmp_path}/{message}"), r.err


def test_a_missing_file_is_one_clear_line(tmp_path):
    r = kit("eval", "extract", "--pred", str(tmp_path / "nope.jsonl"), "--gold", str(jsonl(tmp_path / "g.jsonl", [])))
    assert r.code == 2 and r.error_line == f"kit: error: --pred {tmp_path}/nope.jsonl: no such file"


# --- answers ---------------------------------------------------------------------------------

def test_answers_are_parsed_as_the_first_json_object():
    assert parse_answer('{"name": "Ana"}').fields == {"name": "Ana"}
    fenced = 'Sure! Here it is:\n```json\n{"name": "Ana", "city": ["A", "B"]}\n```\nAnything else?'
    assert parse_answer(fenced).fields == {"name": "Ana", "city": ["A", "B"]}
    echoed = 'You asked for {"name": null}. Here:\n```\n{"name": "Ana"}\n```'
    assert parse_answer(echoed).fields == {"name": "Ana"}  # a fenced block comes first
    assert parse_answer('The answer is {"name": "{Ana}"} and {"name": "no"}').fields == {"name": "{Ana}"}
    assert parse_answer('{broken {"a": {"b": 1}, "c": [[1]]}', ["a", "c"]).fields == {"a": '{"b": 1}', "c": ["[1]"]}
    assert parse_answer('{"a": 1, "other": 2}', ["a"]).fields == {"a": 1}  # keys not asked for are dropped
    assert parse_answer('["a list"]').error == "no JSON object in the answer"
    assert parse_answer("  ").error == "empty answer"


# --- generate against a recording server -----------------------------------------------------

class ScriptedExtractor(RecordingChat):
    """Answers each prompt by the record text it carries; some texts first fail with an HTTP error."""

    ANSWERS: ClassVar[dict[str, str]] = {
        "plain": '{"name": "Ana Lee", "city": "Chicago"}',
        "fenced": 'Here you go:\n```json\n{"name": "Bo", "city": ["Paris", "Lyon"], "note": "dropped"}\n```',
        "junk": "I am not sure what you mean.",
        "flaky": '{"name": "Flo"}',
        "busy": '{"name": "Bea"}',
        "broken": '{"name": "Bert"}',
    }

    def __init__(self, failures: dict | None = None, delay: float = 0.0):
        super().__init__()
        self.failures = {k: list(v) for k, v in (failures or {}).items()}  # text -> statuses to send first
        self.delay = delay
        self.lock = threading.Lock()
        self.seen: list[tuple[str, float, int]] = []  # (text, time, status)

    @staticmethod
    def text(body: dict) -> str:
        return body["messages"][-1]["content"].rsplit("Text:\n", 1)[-1].strip()

    def failure(self, body):
        text = self.text(body)
        with self.lock:
            status = self.failures[text].pop(0) if self.failures.get(text) else 200
            self.seen.append((text, time.monotonic(), status))
        if status == 200:
            return None
        headers = {"Retry-After": "1"} if status == 429 else {}
        return status, headers, {"error": f"scripted {status}", "error_type": "scripted"}

    def reply(self, body):
        time.sleep(self.delay)
        return self.ANSWERS[self.text(body)]


def prompts_file(tmp_path: Path, texts: list[str]) -> Path:
    return jsonl(tmp_path / "prompts.jsonl", [{"id": t, "text": t} for t in texts])


def run_generate(url, prompts, out, *extra, as_json=True):
    key = prompts.parent / "key"
    key.write_text("eval-key\n")
    return kit("eval", "generate", "--endpoint", url, "--api-key-file", str(key), "--prompts", str(prompts),
               "--out", str(out), "--fields", "name,city", "--backoff", "0.01", *(["--json"] if as_json else []), *extra)


def test_generate_retries_parses_reports_and_resumes(tmp_path):
    prompts = prompts_file(tmp_path, ["plain", "fenced", "junk", "flaky", "busy", "broken"])
    out = tmp_path / "pred.jsonl"
    with ScriptedExtractor({"flaky": [500, 503], "busy": [429], "broken": [400]}) as server:
        r = run_generate(server.url, prompts, out)
        assert r.code == 1, r.err  # a prompt failed: not written, reported, exit 1
        s = r.json()
        assert (s["prompts"], s["answered"], s["skipped"], s["failed"]) == (6, 5, 0, 1)
        assert s["failed_ids"] == ["broken"] and s["errors"]['"broken"'].startswith("HTTP 400")
        assert s["unparsable"] == 1 and s["unparsable_ids"] == ["junk"]
        got = {rec["id"]: rec for rec in lines(out)}
        assert set(got) == {"plain", "fenced", "junk", "flaky", "busy"}
        assert got["plain"]["fields"] == {"name": "Ana Lee", "city": "Chicago"}
        assert got["fenced"]["fields"] == {"name": "Bo", "city": ["Paris", "Lyon"]}  # "note" was not asked for
        assert got["junk"]["fields"] == {} and got["junk"]["parse_error"] == "no JSON object in the answer"
        assert got["junk"]["raw"] == ScriptedExtractor.ANSWERS["junk"]
        statuses = {t: [st for tt, _, st in server.seen if tt == t] for t in ("flaky", "busy", "broken")}
        assert statuses == {"flaky": [500, 503, 200], "busy": [429, 200], "broken": [400]}  # 400 is not retried
        busy = [at for t, at, _ in server.seen if t == "busy"]
        assert busy[1] - busy[0] >= 0.9  # the 429's Retry-After: 1 was honoured
        sent = server.requests[0]
        assert sent["auth"] == "Bearer eval-key" and sent["model"] == "recorder" and sent["max_tokens"] == 256
        assert sent["temperature"] == 0.0
        assert 'exactly these keys: ["name", "city"]' in sent["messages"][-1]["content"]

        before = len(server.requests)
        again = run_generate(server.url, prompts, out)  # the 400 is gone now: only "broken" is asked
        assert again.code == 0, again.err
        assert (again.json()["answered"], again.json()["skipped"]) == (1, 5)
        assert [server.text(b) for b in server.requests[before:]] == ["broken"]
    assert sorted(rec["id"] for rec in lines(out)) == sorted(["plain", "fenced", "junk", "flaky", "busy", "broken"])


def test_generate_resumes_after_a_partial_last_line(tmp_path):
    prompts = prompts_file(tmp_path, ["plain", "fenced", "junk"])
    out = tmp_path / "pred.jsonl"
    done = json.dumps({"id": "plain", "fields": {"name": "Ana Lee"}, "raw": "..."})
    out.write_text(done + "\n" + '{"id": "fenced", "fields": {"na')  # a run killed mid-line
    with ScriptedExtractor() as server:
        r = run_generate(server.url, prompts, out, as_json=False)
        assert r.code == 0, r.err
        assert f"removed a partial last line an interrupted run left in {out}" in r.out
        assert f"{out}: 2 answered now, 1 already there, of 3 prompts" in r.out
        assert '1 answer(s) held no JSON object (written as empty predictions): "junk"' in r.out
        assert sorted(server.text(b) for b in server.requests) == ["fenced", "junk"]
        again = run_generate(server.url, prompts, out, "--concurrency", "1")
    assert again.code == 0 and again.json()["answered"] == 0 and again.json()["skipped"] == 3
    assert again.json()["partial_line_removed"] is False
    text = out.read_text()
    assert text.startswith(done + "\n") and text.endswith("\n")
    assert sorted(rec["id"] for rec in lines(out)) == ["fenced", "junk", "plain"]


def test_generate_resumes_after_being_killed(tmp_path):
    texts = ["plain", "fenced", "junk", "flaky", "busy", "broken"]
    prompts = prompts_file(tmp_path, texts)
    out, key = tmp_path / "pred.jsonl", tmp_path / "key"
    key.write_text("k\n")
    with ScriptedExtractor(delay=0.4) as server:
        args = [sys.executable, "-m", "kit.cli", "eval", "generate", "--endpoint", server.url, "--api-key-file",
                str(key), "--prompts", str(prompts), "--out", str(out), "--fields", "name", "--concurrency", "1"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        written = len(lines(out))
        assert 2 <= written < len(texts)
        server.delay = 0
        before = len(server.requests)
        r = run_generate(server.url, prompts, out)
        assert r.code == 0, r.err
        assert r.json()["skipped"] == written and r.json()["answered"] == len(texts) - written
        assert len(server.requests) - before == len(texts) - written  # nothing answered is asked again
    assert sorted(rec["id"] for rec in lines(out)) == sorted(texts)


def test_generate_stops_at_a_refused_key_and_fails_prompts_it_cannot_reach_or_that_hang_up(tmp_path):
    prompts = prompts_file(tmp_path, ["plain", "fenced"])
    with ScriptedExtractor({"plain": [401] * 9, "fenced": [401] * 9}) as server:
        r = run_generate(server.url, prompts, tmp_path / "p.jsonl")
        assert r.code == 2 and "the server refused the API key (401" in r.error_line
        assert len(server.requests) <= 4  # stopped: one refusal per worker at most, no retries
    with ScriptedExtractor() as server:
        closed = server.url
    r = run_generate(closed, prompts, tmp_path / "q.jsonl", "--retries", "1")
    assert r.code == 1, r.err
    s = r.json()
    assert s["failed"] == 2 and "after 2 tries" in s["errors"]['"plain"']
    assert (tmp_path / "q.jsonl").read_text() == ""
    with NetworkFault("drop") as dropping:  # accepts, reads, hangs up: retried like a refused connection
        r = run_generate(dropping.url, prompts, tmp_path / "d.jsonl", "--retries", "2")
    assert r.code == 1 and r.json()["failed"] == 2 and "after 3 tries" in r.json()["errors"]['"fenced"']


def test_generate_bad_input_is_one_clear_line(tmp_path):
    prompts = prompts_file(tmp_path, ["plain"])
    r = kit("eval", "generate", "--endpoint", "http://127.0.0.1:9", "--prompts", str(prompts), "--out", str(tmp_path / "o"))
    assert r.code == 2 and "--fields: name the fields to extract" in r.error_line
    no_text = jsonl(tmp_path / "nt.jsonl", [{"id": 1, "body": "x"}])
    r = kit("eval", "generate", "--endpoint", "http://127.0.0.1:9", "--prompts", str(no_text), "--out",
            str(tmp_path / "o"), "--fields", "a")
    assert r.code == 2 and f'{no_text}:1: the default prompt needs "text"' in r.error_line
    template = tmp_path / "t.j2"
    template.write_text("Read {{ body }} and {{ title }}")
    r = kit("eval", "generate", "--endpoint", "http://127.0.0.1:9", "--prompts", str(no_text), "--out",
            str(tmp_path / "o"), "--template", str(template))
    assert r.code == 2 and f"{no_text}:1: {template}: 'title' is undefined (the record's keys: id, body)" in r.error_line
    r = kit("eval", "generate", "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--fields", "a")
    assert r.code == 2 and "give either --endpoint JOB|URL" in r.error_line
    r = kit("eval", "generate", "--endpoint", "http://127.0.0.1:9", "--adapter", str(tmp_path), "--prompts",
            str(prompts), "--out", str(tmp_path / "o"), "--fields", "a")
    assert r.code == 2 and "--adapter DIR goes with --model DIR" in r.error_line
    broken_out = tmp_path / "broken.jsonl"
    broken_out.write_text("not json\n")
    r = kit("eval", "generate", "--endpoint", "http://127.0.0.1:9", "--prompts", str(prompts), "--out",
            str(broken_out), "--fields", "a")
    assert r.code == 2 and f"{broken_out}:1: not a line that `kit eval generate` writes" in r.error_line
    assert not (tmp_path / "o").exists()  # nothing half-done


# --- generate with a local model -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from standin.tiny_model import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def test_generate_with_a_local_model_and_adapter(tmp_path, tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    prompts = prompts_file(tmp_path, ["Ana Lee lives in Chicago.", "Bo moved to Paris."])
    for extra, out in (([], tmp_path / "base.jsonl"), (["--adapter", str(adapter)], tmp_path / "tuned.jsonl")):
        r = kit("eval", "generate", "--model", str(tiny_model), *extra, "--prompts", str(prompts), "--out", str(out),
                "--fields", "name,city", "--max-tokens", "12", "--json", timeout=300)
        assert r.code == 0, r.err
        s = r.json()
        # the tiny model's answers are random text: every one is reported unparsable, written empty
        assert (s["answered"], s["unparsable"], s["failed"]) == (2, 2, 0)
        assert sorted(s["unparsable_ids"]) == ["Ana Lee lives in Chicago.", "Bo moved to Paris."]
        records = lines(out)
        assert all(rec["fields"] == {} and rec["raw"].strip() and rec["parse_error"] for rec in records)
    base, tuned = lines(tmp_path / "base.jsonl"), lines(tmp_path / "tuned.jsonl")
    assert [b["raw"] for b in base] != [t["raw"] for t in tuned]  # the adapter changed the answers

    r = kit("eval", "generate", "--model", str(tiny_model), "--adapter", str(tmp_path), "--prompts", str(prompts),
            "--out", str(tmp_path / "x.jsonl"), "--fields", "name")
    assert r.code == 2 and f"--adapter {tmp_path}: no adapter_config.json in it" in r.error_line
    other = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "other")
    r = kit("eval", "generate", "--model", str(tiny_model), "--adapter", str(tmp_path / "other"), "--prompts",
            str(prompts), "--out", str(tmp_path / "x.jsonl"), "--fields", "name", timeout=300)
    assert r.code == 2 and f"--adapter {tmp_path}/other: cannot load it onto {tiny_model}: size mismatch" in r.error_line
    assert not (tmp_path / "x.jsonl").exists()


# --- compare ---------------------------------------------------------------------------------

def test_compare_shows_each_run_and_its_difference(tmp_path):
    gold = jsonl(tmp_path / "gold.jsonl", [{"id": 1, "fields": {"name": "Ana", "city": "Rome"}},
                                           {"id": 2, "fields": {"name": "Bo", "city": "Oslo"}}])
    base = jsonl(tmp_path / "base.jsonl", [{"id": 1, "fields": {"name": "Ann", "city": "Rome"}},
                                           {"id": 2, "fields": {}}])
    tuned = jsonl(tmp_path / "tuned.jsonl", [{"id": 1, "fields": {"name": "Ana", "city": "Rome"}},
                                             {"id": 2, "fields": {"name": "Bo", "city": "Bergen"}}])
    r = kit("eval", "compare", "--gold", str(gold), "--pred", str(base), "--pred", str(tuned), "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["labels"] == ["base", "tuned"] and d["baseline"] == "base"
    name, city = d["fields"]["name"], d["fields"]["city"]
    assert name["support"] == 2 and name["base"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert name["tuned"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert name["delta"]["tuned"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert city["base"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}
    assert city["tuned"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert city["delta"]["tuned"]["precision"] == -0.5 and city["delta"]["tuned"]["f1"] == pytest.approx(0.5 - 2 / 3)
    assert d["micro"]["base"]["precision"] == 0.5 and d["micro"]["tuned"]["f1"] == 0.75  # base 1/2 P, tuned 3 of 4
    assert d["macro"]["delta"]["tuned"]["f1"] == pytest.approx((1.0 + 0.5) / 2 - (0.0 + 2 / 3) / 2)

    human = kit("eval", "compare", "--gold", str(gold), "--pred", str(base), "--pred", str(tuned),
                "--label", "smol", "--label", "smol+lora")
    assert human.code == 0, human.err
    row = next(line for line in human.out.splitlines() if line.startswith("│ name"))
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["name", "2", "0.000", "0.000", "0.000", "1.000", "1.000",
                                                              "1.000", "+1.000", "+1.000", "+1.000"]
    assert "smol+lora" in human.out and "Δ" in human.out
    r = kit("eval", "compare", "--gold", str(gold), "--pred", str(base), "--pred", str(tuned), "--label", "one")
    assert r.code == 2 and r.error_line == "kit: error: --label: give one per --pred (2), got 1"
    r = kit("eval", "compare", "--gold", str(gold), "--pred", str(base))
    assert r.code == 2 and "give at least two prediction files" in r.error_line


# --- retrieval -------------------------------------------------------------------------------

def test_recall_at_k():
    ranked = [["d1", "d2", "d3", "d4"], ["d9", "d8"], ["x"]]
    relevant = [{"d1", "d4"}, ["d8"], []]  # the third query has nothing relevant: left out of the mean
    assert recall_at_k(ranked, relevant, 1) == pytest.approx((0.5 + 0.0) / 2)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(1.0)
    assert recall_at_k([["a", "a", "b"]], [["a", "b"]], 2) == 0.5  # a repeated id counts once
    by_id = recall_at_k({"q1": ["a", "b"]}, {"q1": ["b"], "q2": ["c"]}, 2)
    assert by_id == 0.5  # q2 has no ranking: 0
    assert recall_at_k([], [], 3) == 0.0
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k(ranked, relevant, 0)
    with pytest.raises(ValueError, match="same length"):
        recall_at_k(ranked, relevant[:2], 1)
