"""`kit chat` and `kit bench`: talking to a served model."""

from __future__ import annotations

import sys

import click

from kit.cli.options import RECORD_SITE_HELP, emit_json, job_argument, json_option, site_option
from kit.errors import KitError


@click.command("chat")
@click.argument("target", metavar="JOB|URL")
@click.argument("prompt", required=False)
@site_option(RECORD_SITE_HELP)
@click.option("--api-key-file", help="with a URL: a file holding the API key")
@click.option("--model", "model", help="OpenAI model name to send (a LoRA adapter's name picks the adapter)")
@click.option("--system", help="system prompt")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float)
@click.option("--no-stream", is_flag=True, help="print the answer at once")
def chat_cmd(target, prompt, site, api_key_file, model, system, max_tokens, temperature, no_stream):
    """One question (PROMPT), or an interactive chat when PROMPT is left out."""
    from kit.client.chat import Conversation, lines
    from kit.client.connection import target as resolve_target

    url, key, default_model = resolve_target(target, site, api_key_file)
    conversation = Conversation(url, key, model or default_model, system=system, max_tokens=max_tokens,
                                temperature=temperature)

    def ask(text: str) -> None:
        if no_stream:
            click.echo(conversation.ask(text))
        else:
            conversation.ask(text, stream=lambda piece: click.echo(piece, nl=False))
            click.echo()

    if prompt is not None:
        ask(sys.stdin.read() if prompt == "-" else prompt)
        return
    show_prompt = (lambda: click.echo("you> ", nl=False, err=True)) if sys.stdin.isatty() else None
    for question in lines(sys.stdin, show_prompt):
        ask(question)


@click.command("bench")
@job_argument
@click.option("--requests", "n_requests", type=int, default=16, show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--prompt", default="Write a short paragraph about GPUs.", show_default=True)
@json_option()
def bench_cmd(job, site, n_requests, concurrency, max_tokens, prompt, as_json):
    """A short load test: N streamed requests, some at once; time to first token, tokens/s, errors."""
    from kit.client.bench import bench
    from kit.client.connection import target

    if n_requests < 1 or concurrency < 1:
        raise KitError("--requests and --concurrency must be at least 1")
    url, key, model = target(job, site)
    result = bench(url, key, model, requests=n_requests, concurrency=concurrency, max_tokens=max_tokens,
                   prompt=prompt).summary()
    if as_json:
        emit_json(result)
    else:
        for k, v in result.items():
            click.echo(f"{k:>15}: {v}")
    if result["errors"]:
        sys.exit(1)


COMMANDS = [chat_cmd, bench_cmd]
