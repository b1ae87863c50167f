"""`kit eval generate`: send every prompt to a model, parse each answer, append it to the
predictions file that `kit eval extract` reads.

The model is a backend with ``answer(messages) -> text`` and a number of ``workers``: an
``endpoint.Endpoint`` (a served model, several requests at once) or a ``local.LocalModel``
(transformers in this process, one at a time). Ids already in the output are skipped
(``output.answered``), so a rerun after an interruption or failures only asks what is left. A
prompt that got no answer is not written (a rerun asks again) and is reported; an answer that
is not JSON is written as an empty prediction with its raw text and reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kit.eval.answer import parse_answer
from kit.eval.endpoint import PromptFailed
from kit.eval.output import Appender, answered
from kit.eval.prompts import Prompt, messages
from kit.eval.records import show_id


class Backend(Protocol):
    workers: int

    def answer(self, messages: list[dict]) -> str: ...


@dataclass
class Summary:
    out: Path
    prompts: int
    skipped: int = 0  # already answered in the output
    partial_bytes: int = 0  # a partial last line an interrupted run left, cut off
    written: list = field(default_factory=list)
    unparsable: list = field(default_factory=list)  # (id, reason)
    failed: list = field(default_factory=list)  # (id, error): not written, a rerun retries them

    def as_dict(self) -> dict:
        return {
            "out": str(self.out),
            "prompts": self.prompts,
            "skipped": self.skipped,
            "answered": len(self.written),
            "unparsable": len(self.unparsable),
            "unparsable_ids": [i for i, _ in self.unparsable],
            "failed": len(self.failed),
            "failed_ids": [i for i, _ in self.failed],
            "errors": {show_id(i): e for i, e in self.failed},
            "partial_line_removed": self.partial_bytes > 0,
        }


def generate(prompts: list[Prompt], out: Path, backend: Backend, *, field_names: list[str] | None = None,
             system: str | None = None, progress: Callable[[int, int], None] | None = None) -> Summary:
    done, cut = answered(out)
    todo = [p for p in prompts if show_id(p.id) not in done]
    summary = Summary(out, len(prompts), skipped=len(prompts) - len(todo), partial_bytes=cut)
    lock = threading.Lock()
    stop = threading.Event()  # set by a fatal error: send nothing more

    def one(prompt: Prompt) -> None:
        if stop.is_set():
            return
        try:
            text = backend.answer(messages(prompt, system))
        except PromptFailed as e:
            with lock:
                summary.failed.append((prompt.id, str(e)))
            return
        except BaseException:
            stop.set()
            raise
        parsed = parse_answer(text, field_names)
        record = {"id": prompt.id, "fields": parsed.fields, "raw": text}
        if parsed.error:
            record["parse_error"] = parsed.error
        appender.write(record)
        with lock:
            summary.written.append(prompt.id)
            if parsed.error:
                summary.unparsable.append((prompt.id, parsed.error))
            if progress:
                progress(len(summary.written) + len(summary.failed), len(todo))

    with Appender(out) as appender, ThreadPoolExecutor(max_workers=max(1, backend.workers)) as pool:
        futures = [pool.submit(one, p) for p in todo]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: what is written stays complete; a rerun resumes
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        for f in finished:
            if f.exception() is not None:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise f.exception()
    order = {show_id(p.id): n for n, p in enumerate(prompts)}
    for items in (summary.unparsable, summary.failed):
        items.sort(key=lambda item: order[show_id(item[0])])
    return summary


def open_backend(*, endpoint: str | None, model: Path | None, adapter: Path | None, site: str | None,
                 api_key_file: str | None, served_model: str | None, concurrency: int, retries: int, backoff: float,
                 max_tokens: int, temperature: float | None) -> Backend:
    """A served model (JOB or URL, as `kit chat` reaches it) or a local model directory."""
    from kit.errors import KitError

    if bool(endpoint) == bool(model):
        raise KitError("give either --endpoint JOB|URL (a served model) or --model DIR (a local one)")
    if adapter and not model:
        raise KitError("--adapter DIR goes with --model DIR; with --endpoint, pick a served adapter with --served-model NAME")
    if model:
        if served_model or api_key_file:
            raise KitError("--served-model and --api-key-file go with --endpoint, not --model")
        from kit.eval.local import LocalModel

        return LocalModel(model, adapter, max_tokens=max_tokens, temperature=temperature)
    from kit.client.connection import target
    from kit.eval.endpoint import Endpoint

    url, key, default_model = target(endpoint, site, api_key_file)
    return Endpoint(url, key, served_model or default_model, max_tokens=max_tokens, temperature=temperature,
                    workers=concurrency, retries=retries, backoff=backoff)
