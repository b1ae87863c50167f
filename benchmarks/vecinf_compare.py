"""Compare kit's serve plans with vec-inf's catalog (benchmarks/vecinf_cases.yaml).

For each model vec-inf serves with vLLM on L40S, kit plans the same checkpoint at the same
context with vLLM on an L40S tier with 4 GPUs per node (benchmarks/vecinf-l40s.yaml), with its
default sizing (one full-length request plus the typical-request target, memory.yaml) and, for
reference, with the sizing kit used before (`--concurrency 8`: eight full-length requests). It
prints a Markdown table: the GPUs each asks for, how many full-length and typical requests the
plan's KV cache holds at once, the --max-num-seqs kit passes, and kit's per-GPU total against
vLLM's budget. Run:

    .venv/bin/python benchmarks/vecinf_compare.py > /tmp/vecinf.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.plan import plan_serve
from kit.sites import load_site

HERE = Path(__file__).resolve().parent
SITE_FILE = HERE / "vecinf-l40s.yaml"
CASES_FILE = HERE / "vecinf_cases.yaml"


def cases() -> list[dict]:
    return yaml.safe_load(CASES_FILE.read_text())["cases"]


def site():
    return load_site(str(SITE_FILE)).site


def plan(case: dict, site_obj, **options) -> dict:
    info = from_catalog(case["model"], catalog.lookup(case["model"]))
    return plan_serve(info, site_obj, engine="vllm", gpu="l40s", max_total_tokens=case["context"], **options)


def longest_context(case: dict, site_obj, gpus: int) -> int | None:
    """The longest --max-total-tokens kit plans on `gpus` L40S (a multiple of 1024), or None."""
    lo, hi, best = 1, case["context"] // 1024, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if plan({**case, "context": mid * 1024}, site_obj, gpus=gpus)["fits"]:
            best, lo = mid * 1024, mid + 1
        else:
            hi = mid - 1
    return best


def gpus_text(p: dict) -> str:
    return str(p["gpus"]) if p["fits"] else "no fit"


def main() -> int:
    site_obj = site()
    print("| model | context | vec-inf GPUs | kit GPUs (vLLM) | kit before (8 full-length) | "
          "full-length at once | typical at once | --max-num-seqs | kit per GPU / vLLM budget |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    more = 0
    for case in cases():
        now, before = plan(case, site_obj), plan(case, site_obj, concurrency=8)
        if now["fits"]:
            at_once = now["fits_at_once"]
            per = now["per_gpu"]
            cells = [str(at_once["full_length"]), f"{at_once['typical']:,}", str(now["max_concurrent_requests"]),
                     f"{per['total_gib']:.1f} / {per['usable_gib']:.1f} GiB"]
            more += now["gpus"] > case["gpus"]
        else:
            cells = ["-", "-", "-", "-"]
            at_vec = [r["reason"] for r in now["rejected"] if r["option"].startswith(f"{case['gpus']}x ")]
            longest = longest_context(case, site_obj, case["gpus"])
            notes.append(f"{case['model']} at {case['context']:,} tokens on {case['gpus']}x L40S: "
                         f"{at_vec[0] if at_vec else 'not tried'}; the longest context kit plans there is "
                         f"{longest:,} tokens" if longest else "nothing fits there")
        print(f"| {case['model']} | {case['context']:,} | {case['gpus']} | {gpus_text(now)} | {gpus_text(before)} | "
              + " | ".join(cells) + " |")
    for note in notes:
        print(f"\n- {note}")
    print(f"\nkit asks for more GPUs than vec-inf in {more} of {len(cases())} cases")
    return 1 if more else 0


if __name__ == "__main__":
    sys.exit(main())
