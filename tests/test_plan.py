"""Planner decisions on the packaged sites, through the real CLI and JSON output."""

from pathlib import Path

import pytest

from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.plan import plan_finetune, plan_serve
from kit.sites import load_site
from kitrun import kit

QUEST = load_site("quest").site
KLC = load_site("klc").site

JSON_KEYS = {"model", "params", "active_params", "task", "fits", "site", "partition", "gpu_type", "gpu_memory_gib",
             "gpus", "nodes", "constraint", "per_gpu", "engine_args", "rejected"}


def model(name):
    return from_catalog(name, catalog.lookup(name))


def serve(name, site=QUEST, **kw):
    return plan_serve(model(name), site, **kw)


def test_8b_bf16_fits_one_a100_40_with_a_useful_context():
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--json")
    assert r.code == 0, r.err
    plan = r.json()
    assert JSON_KEYS <= plan.keys()
    assert {"weights_gib", "total_gib", "kv_cache_gib"} <= plan["per_gpu"].keys()
    assert (plan["fits"], plan["gpus"], plan["gpu_type"], plan["constraint"]) == (True, 1, "a100-40", "pcie")
    assert plan["gres"] == "gpu:a100:1" and plan["partition"] == "gengpu"
    assert plan["max_total_tokens"] >= 8192 and plan["per_gpu"]["kv_capacity_tokens"] >= 8 * 8192
    assert 14.9 < plan["per_gpu"]["weights_gib"] < 15.1  # 8,030,261,248 x 2 B
    assert plan["per_gpu"]["total_gib"] <= plan["per_gpu"]["usable_gib"]


def test_70b_bf16_needs_several_80gb_gpus_and_not_the_40gb_tier():
    plan = serve("meta-llama/Llama-3.1-70B-Instruct")
    assert plan["fits"] and plan["gpus"] >= 2 and plan["gpu_memory_gib"] > 70
    rejected_40 = [r for r in plan["rejected"] if "a100-40" in r["option"]]
    assert rejected_40, "the 40 GB tier must be tried and rejected"
    assert not plan["gpu_type"].startswith("a100-40")
    forced = serve("meta-llama/Llama-3.1-70B-Instruct", gpu="a100-40")
    assert not forced["fits"]


def test_70b_nf4_fits_on_fewer_gpus_than_bf16():
    bf16 = serve("meta-llama/Llama-3.1-70B-Instruct")
    nf4 = serve("meta-llama/Llama-3.1-70B-Instruct", quantize="bitsandbytes-nf4")
    assert nf4["fits"] and nf4["gpus"] < bf16["gpus"]
    assert "--quantize" in nf4["engine_args"] and "bitsandbytes-nf4" in nf4["engine_args"]


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("site", [QUEST, KLC], ids=["quest", "klc"])
def test_gqa_models_never_get_more_shards_than_kv_heads(engine, site):
    for model_id in catalog.all_ids():
        info = model(model_id)
        lay = info.layout
        plan = plan_serve(info, site, engine=engine, max_total_tokens=min(info.max_context, 32768), concurrency=16)
        if plan["fits"] and lay.num_kv_heads > 1:
            assert plan["gpus"] <= lay.num_kv_heads, model_id
            assert lay.num_kv_heads % plan["gpus"] == 0 and lay.num_attention_heads % plan["gpus"] == 0, model_id


def test_explicit_tp_over_kv_heads_is_refused():
    # Qwen2.5-7B: 28 heads, 4 KV heads.
    r = kit("plan", "serve", "Qwen/Qwen2.5-7B-Instruct", "--site", "quest", "--gpus", "8")
    assert r.code != 0 and "--gpus 8" in r.error_line and "does not divide" in r.error_line
    ok = kit("plan", "serve", "Qwen/Qwen2.5-7B-Instruct", "--site", "quest", "--gpus", "4", "--json")
    assert ok.json()["gpus"] == 4


def test_falcon_7b_is_never_sharded():
    for concurrency in (1, 64, 512):
        plan = serve("tiiuae/falcon-7b", concurrency=concurrency)
        assert plan["gpus"] in (1, None)
        reasons = " ".join(r["reason"] for r in plan["rejected"])
        assert "71 attention heads" in reasons
    r = kit("plan", "serve", "tiiuae/falcon-7b", "--site", "quest", "--gpus", "2")
    assert r.code != 0 and "71 attention heads" in r.error_line


def test_over_the_gpu_cap_is_refused_with_the_reason():
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--gpus", "16")
    assert r.code != 0 and "cap of 8 GPUs" in r.error_line
    big = serve("meta-llama/Llama-3.1-8B-Instruct", gpus=8)
    assert not big["fits"]
    assert all("nodes have" in r["reason"] for r in big["rejected"])  # 8 GPUs exceed every node


def test_nothing_fits_names_the_smallest_quantization_that_would():
    r = kit("plan", "serve", "meta-llama/Llama-3.1-405B-Instruct", "--site", "quest", "--json")
    assert r.code == 1
    plan = r.json()
    assert plan["fits"] is False and plan["gpus"] is None
    assert plan["suggestion"]["quantize"] == "bitsandbytes-nf4"
    human = kit("plan", "serve", "meta-llama/Llama-3.1-405B-Instruct", "--site", "quest")
    assert "--quantize bitsandbytes-nf4 would fit" in human.out


def test_engine_flags_follow_the_plan():
    tgi = serve("meta-llama/Llama-3.1-70B-Instruct", engine="tgi")
    args = tgi["engine_args"]
    for flag in ("--num-shard", "--max-input-tokens", "--max-total-tokens", "--max-batch-prefill-tokens",
                 "--cuda-memory-fraction"):
        assert flag in args
    assert args[args.index("--num-shard") + 1] == str(tgi["gpus"])
    assert int(args[args.index("--max-batch-prefill-tokens") + 1]) >= tgi["max_input_tokens"]
    vllm = serve("meta-llama/Llama-3.1-70B-Instruct", engine="vllm", quantize="fp8")
    v = vllm["engine_args"]
    assert v[v.index("--tensor-parallel-size") + 1] == str(vllm["gpus"])
    assert v[v.index("--quantization") + 1] == "fp8"
    assert v[v.index("--max-model-len") + 1] == str(vllm["max_total_tokens"])
    assert "--gpu-memory-utilization" in v


def test_every_cheaper_option_is_explained():
    plan = serve("Qwen/Qwen2.5-32B-Instruct")  # 40 heads, 8 KV heads: 1, 2, 4 or 8 shards
    assert plan["fits"]
    tiers = QUEST.partitions["gengpu"].gpu_tiers
    chosen_cost = plan["gpus"] * tiers[plan["gpu_type"]].cost
    cheaper = {f"{n}x {name} (gengpu)" for name, t in tiers.items() for n in (1, 2, 4, 8) if n * t.cost < chosen_cost}
    explained = {r["option"] for r in plan["rejected"] if r["reason"]}
    assert cheaper and cheaper <= explained


def test_klc_plans_use_its_own_tiers():
    plan = serve("meta-llama/Llama-3.1-8B-Instruct", site=KLC)
    assert plan["gpu_type"] == "l40s" and plan["constraint"] is None and plan["partition"] == "kellogg"
    big = serve("meta-llama/Llama-3.1-70B-Instruct", site=KLC)
    assert big["gpu_type"] == "h100" and big["gpus"] == 4  # the 80 GB A100 node has one GPU


def test_longer_context_and_more_users_need_more_memory():
    small = serve("meta-llama/Llama-3.1-8B-Instruct", max_total_tokens=4096, concurrency=1)
    large = serve("meta-llama/Llama-3.1-8B-Instruct", max_total_tokens=32768, concurrency=16)
    # 128x the tokens; the KV heads (and so the cache) are split over the shards.
    total_large = large["per_gpu"]["kv_cache_gib"] * large["gpus"]
    assert total_large == pytest.approx(small["per_gpu"]["kv_cache_gib"] * small["gpus"] * 128, rel=0.01)
    assert large["gpus"] > small["gpus"] or large["gpu_memory_gib"] > small["gpu_memory_gib"]


def test_qlora_70b_fits_one_80gb_gpu_and_full_does_not_fit():
    qlora = plan_finetune(model("meta-llama/Llama-3.1-70B-Instruct"), QUEST, method="qlora")
    assert qlora["fits"] and qlora["gpus"] == 1 and qlora["gpu_memory_gib"] > 70
    full = plan_finetune(model("meta-llama/Llama-3.1-70B-Instruct"), QUEST, method="full")
    assert not full["fits"] and "lora" in full["suggestion"]["text"]


def test_lora_trainable_parameters_match_peft():
    # PEFT prints 41,943,040 trainable parameters for Llama-3-8B with r=16 on all linear layers.
    plan = plan_finetune(model("meta-llama/Llama-3.1-8B-Instruct"), QUEST, method="lora", lora_r=16)
    assert plan["trainable_params"] == 41_943_040
    qv = plan_finetune(model("meta-llama/Llama-3.1-8B-Instruct"), QUEST, method="lora", lora_r=8,
                       lora_targets="q_proj,v_proj")
    assert qv["trainable_params"] == 32 * 8 * ((4096 + 4096) + (4096 + 1024))  # 3,407,872


def test_gradient_checkpointing_saves_activation_memory():
    on = plan_finetune(model("meta-llama/Llama-3.1-8B-Instruct"), QUEST, method="qlora", seq_len=4096, grad_ckpt=True)
    off = plan_finetune(model("meta-llama/Llama-3.1-8B-Instruct"), QUEST, method="qlora", seq_len=4096,
                        grad_ckpt=False, gpu="a100-80")
    assert off["per_gpu"]["activations_gib"] > 5 * on["per_gpu"]["activations_gib"]


def test_finetune_cli_json_and_table():
    r = kit("plan", "finetune", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--method", "qlora", "--json")
    plan = r.json()
    assert JSON_KEYS <= plan.keys()
    assert {"weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "logits_gib"} <= plan["per_gpu"].keys()
    human = kit("plan", "finetune", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--method", "qlora")
    assert "optimizer states" in human.out and "chosen: 1x a100-40" in human.out


@pytest.mark.parametrize("args, expected", [
    (["--quantize", "int3"], "'--quantize'"),
    (["--engine", "vllm", "--quantize", "bitsandbytes"], "not available with --engine vllm"),
    (["--quantize", "awq"], "pre-quantized AWQ checkpoint"),
    (["--gpu", "v100"], "--gpu v100: not a GPU tier"),
    (["--partition", "short"], "has no GPUs"),
    (["--max-total-tokens", "999999"], "over meta-llama/Llama-3.1-8B-Instruct's context"),
    (["--max-input-tokens", "9000", "--max-total-tokens", "8192"], "--max-input-tokens 9000"),
    (["--dtype", "float32"], "--dtype float32"),
    (["--gpus", "3"], "tensor-parallel size 3 does not divide"),
])
def test_bad_serve_options_give_one_clear_line(args, expected):
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", *args)
    assert r.code != 0
    assert expected in r.error_line


def test_bad_finetune_options_give_one_clear_line():
    r = kit("plan", "finetune", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--lora-targets", "qkv")
    assert r.code != 0 and "q_proj" in r.error_line and "qkv" in r.error_line
    r = kit("plan", "finetune", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--optimizer", "lion")
    assert "--optimizer lion" in r.error_line


@pytest.mark.parametrize("args, expected", [
    (["--concurrency", "0"], "--concurrency 0: must be at least 1"),
    (["--max-total-tokens", "0"], "--max-total-tokens 0: must be at least 2"),
    (["--max-total-tokens", "-5"], "--max-total-tokens -5: must be at least 2"),
])
def test_zero_and_negative_values_are_refused(args, expected):
    r = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", *args)
    assert r.code != 0 and expected in r.error_line


@pytest.mark.parametrize("flag", ["--seq-len", "--batch-size", "--lora-r"])
def test_zero_finetune_values_are_refused(flag):
    r = kit("plan", "finetune", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", flag, "0")
    assert r.code != 0 and f"{flag} 0: must be at least 1" in r.error_line


def test_per_user_cap_below_a_node_rejects_the_larger_options(tmp_path):
    site = tmp_path / "capped.yaml"
    site.write_text((Path(__file__).parents[1] / "site-configs" / "quest.yaml").read_text()
                    .replace("gpus_per_user: 8 ", "gpus_per_user: 2 "))
    plan = kit("plan", "serve", "meta-llama/Llama-3.1-70B-Instruct", "--site", str(site), "--json").json()
    assert not plan["fits"]
    assert any("per-user cap of 2 GPUs" in r["reason"] for r in plan["rejected"])
    assert plan["suggestion"]["quantize"] == "fp8" and plan["suggestion"]["gpus"] <= 2


def test_70b_bf16_takes_four_80gb_a100s():
    plan = serve("meta-llama/Llama-3.1-70B-Instruct")
    assert (plan["gpus"], plan["gpu_type"], plan["gres"], plan["constraint"]) == (4, "a100-80", "gpu:a100:4", "sxm")


def test_engine_quantizations_are_known_to_the_memory_model():
    """engines.yaml may offer only quantizations memory.yaml can size, and the planner's
    fallbacks only quantizations that exist."""
    from kit.engines import engines
    from kit.plan import quantize_choices
    from kit.plan.memory import constants

    known = set(quantize_choices())
    for name, facts in engines().items():
        assert set(facts["quantize"]) <= known, name
    assert set(constants()["suggest_order"]) <= known
    assert set(constants()["checkpoint_methods"].values()) | set(constants()["checkpoint_4bit"].values()) <= known
    assert {m["base_quantization"] for m in constants()["finetune"]["methods"].values()} - {None} <= known
