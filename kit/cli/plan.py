"""`kit plan`: the memory budget and the cheapest allocation, for serving or fine-tuning."""

from __future__ import annotations

import sys

import click

from kit.cli.options import account_option, emit_json, placement_options, serve_options


@click.group()
def plan():
    """GPU memory budget and the cheapest allocation that fits."""


@plan.command("serve")
@click.argument("model")
@serve_options
@placement_options
@account_option()
def plan_serve_cmd(model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site,
                   partition, gpu, gpus, as_json, account):
    """Plan serving MODEL with TGI or vLLM."""
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
    result = plan_serve(info, site_obj, engine=engine, dtype=dtype, quantize=quantize,
                        max_input_tokens=max_input_tokens, max_total_tokens=max_total_tokens,
                        concurrency=concurrency, partition=partition, gpu=gpu, gpus=gpus)
    show_plan(result, as_json)


def method_choice():
    from kit.plan import methods

    return click.Choice(methods())


@plan.command("finetune")
@click.argument("model")
@click.option("--method", type=method_choice(), help="default: lora")
@click.option("--seq-len", type=int, help="tokens per sequence (default 2048)")
@click.option("--batch-size", type=int, help="micro-batch per GPU (default 1)")
@click.option("--grad-ckpt/--no-grad-ckpt", default=None, help="gradient checkpointing (default: on)")
@click.option("--lora-r", type=int, help="LoRA rank (default 16)")
@click.option("--lora-targets", help="all-linear, or a comma list of module names (default: all-linear)")
@click.option("--optimizer", help="adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, adafactor, sgd")
@placement_options
@account_option()
def plan_finetune_cmd(model, method, seq_len, batch_size, grad_ckpt, lora_r, lora_targets, optimizer, site,
                      partition, gpu, gpus, as_json, account):
    """Plan fine-tuning MODEL (full, LoRA or QLoRA)."""
    from kit.models.resolve import resolve
    from kit.plan import plan_finetune
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
    result = plan_finetune(info, site_obj, method=method, seq_len=seq_len, batch_size=batch_size,
                           grad_ckpt=grad_ckpt, lora_r=lora_r, lora_targets=lora_targets, optimizer=optimizer,
                           partition=partition, gpu=gpu, gpus=gpus)
    show_plan(result, as_json)


def show_plan(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
    else:
        from kit.cli import tables

        tables.plan_report(result)
    if not result["fits"]:
        sys.exit(1)
