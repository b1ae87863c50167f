"""Human output: rich tables for sites, models, plans, jobs and images (``--json`` bypasses this module)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

# Piped output (logs, CI, `| less`) gets 120 columns instead of rich's 80.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


def billions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} B"


def sites_table(rows) -> None:
    table = Table(title="Sites")
    for col in ("site", "description", "GPU partitions", "files"):
        table.add_column(col)
    for loaded in rows:
        site = loaded.site
        table.add_row(site.name, site.description, ", ".join(site.gpu_partitions()), "\n".join(map(str, loaded.files)))
    console.print(table)


def site_detail(loaded) -> None:
    site = loaded.site
    assumed = site.assumed
    console.print(f"[bold]{site.name}[/bold]: {site.description}")
    console.print(f"  files: {', '.join(map(str, loaded.files))}")
    console.print(f"  login: {site.login_host}   account: {site.account.default or '(none: set KIT_ACCOUNT)'} "
                  f"(like {site.account.placeholder})   accounting: {'sacct' if site.accounting else 'none'}")
    rt = site.runtime
    console.print(f"  runtime: {'/'.join(rt.binaries)} via module {rt.module or '-'}; fakeroot builds: "
                  f"{'yes' if rt.fakeroot else 'no'}; driver CUDA <= {site.driver.cuda_max}")
    cap = f"{site.limits.gpus_per_user} GPUs per user" if site.limits.gpus_per_user else "no per-user GPU cap"
    console.print(f"  limits: {cap}; "
                  f"{site.limits.max_nodes_per_job} node(s) per job; ports {site.network.port_range[0]}-{site.network.port_range[1]}")
    parts = Table(title="Partitions")
    for col in ("partition", "max walltime", "GPU tiers", "note"):
        parts.add_column(col)
    for name, p in site.partitions.items():
        mark = " *" if f"partitions.{name}.max_walltime" in assumed else ""
        parts.add_row(name, (p.max_walltime or "unlimited") + mark, ", ".join(p.gpu_tiers) or "-", p.description or "")
    console.print(parts)
    tiers = Table(title="GPU tiers")
    for col in ("tier", "gres", "constraint", "card", "GiB usable", "GPUs/node", "nodes", "cost"):
        tiers.add_column(col)
    groups: dict[str, list[str]] = {}  # partitions sharing one tier set (YAML anchors) share rows
    for pname, p in site.gpu_partitions().items():
        same = next((g for g in groups if site.partitions[g].gpu_tiers == p.gpu_tiers), pname)
        groups.setdefault(same, []).append(pname)
    for first, members in groups.items():
        tiers.add_section()
        tiers.add_row(f"[bold]{', '.join(members)}[/bold]", *[""] * 7)
        for tname, t in site.partitions[first].gpu_tiers.items():
            key = f"partitions.{first}.gpu_tiers.{tname}"

            def mark(field: str, value) -> str:
                return f"{value} *" if f"{key}.{field}" in assumed else str(value)

            tiers.add_row(tname, f"gpu:{t.gres}", t.constraint or "-", t.model, mark("usable_gib", t.usable_gib),
                          str(t.gpus_per_node), str(t.nodes if t.nodes is not None else "?"), mark("cost", t.cost))
    console.print(tiers)
    if assumed:
        console.print("[bold]Assumed values[/bold] (* above; verify on the cluster, then `kit sites check`):")
        for key, why in assumed.items():
            console.print(f"  {key}: {why}")


def check_report(name: str, findings: list[dict]) -> None:
    if not findings:
        console.print(f"{name}: the live cluster matches the site config")
        return
    console.print(f"{name}: {len(findings)} drift(s) between the site config and the live cluster:")
    for f in findings:
        console.print(f"  - {f['key']}: {f['message']}")


def model_detail(info) -> None:
    d = info.as_dict()
    table = Table(title=f"{info.name} ({info.source}: {info.location})", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in d.items():
        if key in ("model", "warnings") or value is None:
            continue
        if key in ("params", "active_params"):
            value = f"{value:,} ({billions(value)})"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        table.add_row(key, str(value))
    console.print(table)
    for w in info.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def models_table(rows: list[dict], site: str | None, engine: str) -> None:
    table = Table(title="Catalog models" + (f": smallest {engine} allocation on {site}" if site else ""))
    for col in ("model", "family", "params", "active", "context") + (("serve",) if site else ()):
        table.add_column(col, justify="right" if col in ("params", "active", "context") else "left",
                         no_wrap=col == "model")
    for r in rows:
        cells = [r["model"], r["family"] or "", billions(r["params"]),
                 billions(r["active_params"]) if r["active_params"] != r["params"] else "=", str(r["max_context"] or "-")]
        if site:
            cells.append(r["serve"])
        table.add_row(*cells)
    console.print(table)


TERM_LABELS = {
    "weights": "weights",
    "kv_cache": "KV cache",
    "activations": "activations",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "logits": "logits",
    "overhead": "overhead (CUDA context, workspaces)",
}


def per_gpu_margin_text() -> str:
    from kit.plan.memory import constants

    c = constants()["serve"]
    return f"{c['kv_headroom']:.0%} KV headroom and {c['margin_gib']:g} GiB margin"


def plan_report(r: dict) -> None:
    active = f", {r['active_params']:,} active" if r["active_params"] != r["params"] else ""
    console.print(f"[bold]{r['model']}[/bold]: {r['params']:,} parameters{active} ({r['params_from']})")
    if r["task"] == "serve":
        q = "" if r["quantize"] == "none" else f", quantize {r['quantize']}"
        if r["concurrency"] is not None:
            target = f"KV cache for {r['concurrency']} full-length requests at once"
        else:
            target = (f"KV cache for one full-length request and {r['typical_requests_target']} typical ones "
                      f"({r['typical_request_tokens']:,} tokens) at once")
        console.print(f"serve with {r['engine']} {r['engine_version']}: {r['dtype']}{q}, up to {r['max_total_tokens']:,} "
                      f"tokens per request ({r['max_input_tokens']:,} input); {target}")
    else:
        lora = "" if r["lora_r"] is None else f", LoRA r={r['lora_r']} on {r['lora_targets']}"
        console.print(f"fine-tune ({r['method']}{lora}): seq {r['seq_len']}, batch {r['batch_size']}, "
                      f"grad-ckpt {'on' if r['grad_ckpt'] else 'off'}, {r['optimizer']}; "
                      f"{r['trainable_params']:,} trainable parameters")
    for line in r["rejected"]:
        console.print(f"  [dim]x {line['option']}: {line['reason']}[/dim]")
    for w in r["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if not r["fits"]:
        hint = f"; {r['suggestion']['text']}" if r.get("suggestion") else ""
        console.print(f"[red]nothing on {r['site']} fits{hint}[/red]")
        return
    per = r["per_gpu"]
    table = Table(title=f"per GPU: {r['gpu_model']} ({r['gpu_memory_gib']} GiB)")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    for name, value in per.items():  # the breakdown's own order
        term = name.removesuffix("_gib")
        if term in TERM_LABELS:
            table.add_row(TERM_LABELS[term], f"{value:.2f}")
    table.add_row("[bold]total[/bold]", f"[bold]{per['total_gib']:.2f}[/bold]")
    budget = "engine budget" if r["task"] == "serve" else "usable"
    table.add_row(budget, f"{per['usable_gib']:.2f}")
    console.print(table)
    if "kv_capacity_tokens" in per:
        console.print(f"KV cache room: {per['kv_capacity_tokens']:,} tokens "
                      f"({per['kv_bytes_per_token']:,} bytes per token per GPU)")
    if r.get("fits_at_once"):
        at_once = r["fits_at_once"]
        console.print(f"at once (keeping the {per_gpu_margin_text()}): {at_once['full_length']:,} full-length "
                      f"({r['max_total_tokens']:,} tokens) or {at_once['typical']:,} typical "
                      f"({r['typical_request_tokens']:,} tokens) requests; the engine admits "
                      f"{r['max_concurrent_requests']:,} at most")
    constraint = f" --constraint={r['constraint']}" if r["constraint"] else ""
    console.print(f"[green]chosen:[/green] {r['gpus']}x {r['gpu_type']} on {r['site']}: "
                  f"--partition={r['partition']} --nodes={r['nodes']} --gres={r['gres']}{constraint}")
    console.print("args: " + " ".join(r["engine_args"]))
    if r.get("host_mem_gib"):
        console.print(f"host memory: needs {r['host_mem_gib']} GiB (the job's --mem is at least that)")


def jobs_table(rows: list[dict]) -> None:
    table = Table(title="kit jobs")
    for col in ("job", "name", "state", "site", "engine", "model", "endpoint"):
        table.add_column(col)
    for r in rows:
        state = r["state"] + (f" ({r['reason']})" if r["reason"] else "")
        table.add_row(str(r["job_id"]), r["name"], state, r["site"] or "", r["engine"] or r.get("task") or "",
                      r["model"] or "", r["url"] or r.get("output_dir") or "-")
    console.print(table)


def images_table(rows: list[dict], site: str | None) -> None:
    table = Table(title="kit images" + (f" on {site}" if site else ""))
    for col in ("image", "version", "upstream", "digest", "CUDA", "built sha256") + (("local",) if site else ()):
        table.add_column(col)
    for r in rows:
        digest = r["digest"] if r["digest"] == "unresolved" else r["digest"][:19] + "..."
        cells = [r["image"], str(r["version"]), r["upstream"], digest, str(r["cuda"] or "-"),
                 (r["sif_sha256"] or "not built")[:12]]
        if site:
            cells.append(r["local"])
        table.add_row(*cells)
    console.print(table)
    for r in rows:
        if r.get("unverified"):
            console.print(f"[yellow]unverified:[/yellow] {r['image']} {r['version']}: {r['unverified']}")


def score(x: float) -> str:
    return f"{x:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}" if round(x, 3) else " 0.000"


def some_ids(ids: list, limit: int = 10) -> str:
    import json

    shown = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def record_notes(records: dict, label: str = "") -> None:
    prefix = f"{label}: " if label else ""
    if records["only_gold"]:
        console.print(f"[yellow]{prefix}{len(records['only_gold'])} gold id(s) without a prediction (scored as false "
                      f"negatives):[/yellow] {some_ids(records['only_gold'])}")
    if records["only_pred"]:
        console.print(f"[yellow]{prefix}{len(records['only_pred'])} predicted id(s) not in the gold file (scored as "
                      f"false positives):[/yellow] {some_ids(records['only_pred'])}")


def extract_report(r: dict) -> None:
    """`kit eval extract`: per-field precision, recall, F1, support and counts; micro and macro."""
    table = Table(title=f"Extraction: {r['records']['pred']} predicted vs {r['records']['gold']} gold records")
    for col in ("field", "support", "precision", "recall", "F1", "TP", "FP", "FN"):
        table.add_column(col, justify="left" if col == "field" else "right")
    for name, c in r["fields"].items():
        table.add_row(name, str(c["support"]), score(c["precision"]), score(c["recall"]), score(c["f1"]),
                      str(c["tp"]), str(c["fp"]), str(c["fn"]))
    table.add_section()
    m = r["micro"]
    table.add_row("[bold]micro[/bold]", str(m["support"]), score(m["precision"]), score(m["recall"]),
                  score(m["f1"]), str(m["tp"]), str(m["fp"]), str(m["fn"]))
    a = r["macro"]
    table.add_row("[bold]macro[/bold]", f"{a['fields']} fields", score(a["precision"]), score(a["recall"]),
                  score(a["f1"]), "", "", "")
    console.print(table)
    record_notes(r["records"])


def compare_report(d: dict) -> None:
    """`kit eval compare`: each run's P/R/F1 per field, and its difference from the baseline."""
    labels, base = d["labels"], d["baseline"]
    others = labels[1:]
    table = Table(title=f"Extraction: {' vs '.join(labels)} (differences against {base})")
    table.add_column("field")
    table.add_column("support", justify="right")
    for label in labels:
        for metric in ("P", "R", "F1"):
            table.add_column(f"{label}\n{metric}", justify="right")
    for label in others:
        for metric in ("P", "R", "F1"):
            table.add_column(f"Δ {label}\n{metric}", justify="right")

    def cells(row: dict) -> list[str]:
        out = [score(row[label][m]) for label in labels for m in ("precision", "recall", "f1")]
        return out + [signed(row["delta"][label][m]) for label in others for m in ("precision", "recall", "f1")]

    for name, row in d["fields"].items():
        table.add_row(name, str(row["support"]), *cells(row))
    table.add_section()
    table.add_row("[bold]micro[/bold]", "", *cells(d["micro"]))
    table.add_row("[bold]macro[/bold]", "", *cells(d["macro"]))
    console.print(table)
    for label in labels:
        record_notes(d["records"][label], label)


def generate_summary(s: dict) -> None:
    """`kit eval generate`: what was answered, skipped, unparsable and failed."""
    if s["partial_line_removed"]:
        console.print(f"[yellow]removed a partial last line an interrupted run left in {s['out']}[/yellow]")
    console.print(f"{s['out']}: {s['answered']} answered now, {s['skipped']} already there, of {s['prompts']} prompts")
    if s["unparsable"]:
        console.print(f"[yellow]{s['unparsable']} answer(s) held no JSON object (written as empty predictions):"
                      f"[/yellow] {some_ids(s['unparsable_ids'])}")
    if s["failed"]:
        first = next(iter(s["errors"].values()))
        console.print(f"[red]{s['failed']} prompt(s) got no answer (not written; rerun to retry them):[/red] "
                      f"{some_ids(s['failed_ids'])}; first error: {first}")
def services_table(rows: list[dict]) -> None:
    table = Table(title="Services")
    for col in ("name", "model", "state", "gen", "node", "uptime", "time left", "next renewal", "req/h"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["model"] or "-", r["state"] or "-", str(r["generation"] or "-"), r["node"] or "-",
                      r["uptime"] or "-", r["time_left"] or "-", r["next_renewal"] or "-",
                      "-" if r["requests_last_hour"] is None else str(r["requests_last_hour"]))
    console.print(table)


def usage_table(rows: list[dict]) -> None:
    table = Table(title="Usage per lab and generation")
    for col in ("lab", "generation", "job", "requests", "prompt tokens", "generated tokens", "errors", "no usage"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["lab"], str(r["generation"]), r["job_id"], str(r["requests"]), str(r["prompt_tokens"]),
                      str(r["generated_tokens"]), str(r["errors"]), str(r["without_usage"]))
    console.print(table)
