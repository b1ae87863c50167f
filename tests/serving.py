"""Helpers for the serving tests: render jobs for a site, and read the engine command back."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kit.jobs import serve
from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.plan import plan_serve

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "standin"


def build_job(site, engine: str, model_id: str = "meta-llama/Llama-3.1-8B-Instruct", account=None, **plan_options):
    info = from_catalog(model_id, catalog.lookup(model_id))
    plan = plan_serve(info, site, engine=engine, **plan_options)
    if not plan["fits"]:
        return None
    return serve.build(site, info, plan, account=account, time=None, adapters=[], name=f"golden-{engine}",
                       ready_timeout_s=1800, request={})


def engine_command(script: str) -> list[str]:
    """The engine's argv as rendered: from the runtime call up to the trailing '&'."""
    match = re.search(r'^("\$KIT_RUNTIME" (?:run|exec) --nv .*?) > "\$KIT_RUN_DIR/engine.out" 2>&1 &$', script,
                      re.MULTILINE | re.DOTALL)
    assert match, "no engine command (with its output through the redacting pipe) in the script"
    return shlex.split(match.group(1).replace("\\\n", " "))


def engine_flags(argv: list[str], engine: str) -> list[tuple[str, str | None]]:
    """(flag, value) pairs after the image (and after `vllm serve MODEL` for vLLM)."""
    image_index = next(i for i, a in enumerate(argv) if a.endswith(".sif"))
    rest = argv[image_index + 1:]
    if engine == "vllm":
        assert rest[:2] == ["vllm", "serve"], rest[:3]
        rest = rest[3:]
    pairs, i = [], 0
    while i < len(rest):
        flag = rest[i]
        assert flag.startswith("--"), f"unexpected argument {flag!r} in {rest}"
        values = []
        i += 1
        while i < len(rest) and not rest[i].startswith("--"):
            values.append(rest[i])
            i += 1
        pairs.append((flag, " ".join(values) if values else None))  # several values: a multi-value flag
    return pairs
