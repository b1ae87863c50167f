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
