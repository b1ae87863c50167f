"""`kit eval`: extraction scores (extract), predictions from a model (generate), runs side by side (compare)."""

from __future__ import annotations

import sys

import click

from kit.cli.options import RECORD_SITE_HELP, emit_json, json_option, site_option

JSONL = click.Path(dir_okay=False)


@click.group("eval")
def eval_group():
    """Evaluate extraction: precision, recall and F1 per field, and the predictions to score."""


@eval_group.command("extract")
@click.option("--pred", "pred", required=True, type=JSONL, help='predictions: {"id": ..., "fields": {NAME: VALUE or [VALUES]}} per line')
@click.option("--gold", "gold", required=True, type=JSONL, help="gold records, same format")
@json_option("print one JSON object: micro, macro, fields, records")
def extract_cmd(pred, gold, as_json):
    """Precision, recall, F1 and support per field, micro and macro, of PRED against GOLD.

    Values match after normalisation (NFKC, case-fold, whitespace collapsed, punctuation
    stripped at both ends); lists are multisets; an id on one side only is reported and scored
    as an empty record on the other side."""
    from kit.eval.extract import evaluate

    report = evaluate(gold, pred).as_dict()
    if as_json:
        emit_json(report)
        return
    from kit.cli.tables import extract_report

    extract_report(report)


@eval_group.command("generate")
@click.option("--endpoint", metavar="JOB|URL", help="a served model: a kit job, or the URL of a TGI/vLLM server")
@click.option("--model", "model", metavar="DIR", type=click.Path(file_okay=False), help="or a local model directory (transformers)")
@click.option("--adapter", metavar="DIR", type=click.Path(file_okay=False), help="with --model: a LoRA adapter directory to load onto it (peft)")
@click.option("--prompts", required=True, type=JSONL, help='JSONL: {"id": ..., "text": "...", ...} per line')
@click.option("--out", required=True, type=JSONL, help="predictions JSONL to append to; ids already there are skipped")
@click.option("--fields", "fields", multiple=True, metavar="A,B,...", help="field names to extract (the default prompt needs them)")
@click.option("--template", metavar="FILE", type=click.Path(dir_okay=False), help="Jinja prompt template: the record's keys, `record`, `field_names`")
@click.option("--system", help="system prompt")
@site_option(RECORD_SITE_HELP)
@click.option("--api-key-file", metavar="FILE", help="with a URL: a file holding the API key")
@click.option("--served-model", metavar="NAME", help="with --endpoint: the model name to send (an adapter's name picks the adapter)")
@click.option("--concurrency", metavar="N", type=click.IntRange(min=1), default=4, show_default=True, help="requests at once (--endpoint)")
@click.option("--retries", metavar="N", type=click.IntRange(min=0), default=4, show_default=True, help="retries of a request on 429, 5xx or a dropped connection")
@click.option("--backoff", metavar="SECONDS", type=click.FloatRange(min=0), default=1.0, show_default=True, help="seconds before the first retry; doubles each time")
@click.option("--max-tokens", metavar="N", type=click.IntRange(min=1), default=256, show_default=True, help="most tokens per answer")
@click.option("--temperature", metavar="T", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy decoding")
@json_option("print the summary as JSON")
def generate_cmd(endpoint, model, adapter, prompts, out, fields, template, system, site, api_key_file, served_model,
                 concurrency, retries, backoff, max_tokens, temperature, as_json):
    """Answer every prompt with a model and write predictions that `kit eval extract` reads.

    Each answer's first JSON object (fenced or not) becomes the record's fields; an answer
    without one is written as an empty prediction and reported. Rerunning skips ids already
    answered in OUT; prompts that failed are not written, so a rerun retries them (exit 1)."""
    from pathlib import Path

    from kit.eval.generate import generate, open_backend
    from kit.eval.prompts import build_prompts

    names = [n.strip() for value in fields for n in value.split(",") if n.strip()]
    todo = build_prompts(Path(prompts), Path(template) if template else None, names)
    backend = open_backend(endpoint=endpoint, model=Path(model) if model else None,
                           adapter=Path(adapter) if adapter else None, site=site, api_key_file=api_key_file,
                           served_model=served_model, concurrency=concurrency, retries=retries, backoff=backoff,
                           max_tokens=max_tokens, temperature=temperature)
    progress = None
    if sys.stderr.isatty() and not as_json:
        def progress(n, total):
            click.echo(f"\r{n}/{total}", nl=False, err=True)
    summary = generate(todo, Path(out), backend, field_names=names or None, system=system, progress=progress).as_dict()
    if progress:
        click.echo(err=True)
    if as_json:
        emit_json(summary)
    else:
        from kit.cli.tables import generate_summary

        generate_summary(summary)
    if summary["failed"]:
        sys.exit(1)


@eval_group.command("compare")
@click.option("--gold", required=True, type=JSONL, help="gold records")
@click.option("--pred", "preds", required=True, multiple=True, type=JSONL, help="a predictions file (repeat; the first is the baseline)")
@click.option("--label", "labels", metavar="NAME", multiple=True, help="a name per --pred, in order (default: file names)")
@json_option("print one JSON object: per field and micro/macro, each run and its delta from the first")
def compare_cmd(gold, preds, labels, as_json):
    """Prediction files side by side on one gold file (e.g. base model vs fine-tuned adapter):
    P/R/F1 per field for each, and each run's difference from the first."""
    from kit.eval.compare import compare

    data = compare(gold, list(preds), list(labels))
    if as_json:
        emit_json(data)
        return
    from kit.cli.tables import compare_report

    compare_report(data)
