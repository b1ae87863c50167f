"""The ingest progress bar (rich, on stderr; nothing when stderr is not a terminal)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def file_progress(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<32.32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal, transient=False) as bar:
        task = bar.add_task("ingesting", total=total)

        def advance(n: int, name: str) -> None:
            bar.update(task, advance=n, description=name)

        yield advance
