"""Model metadata: the catalog's exact counts, local directories, the shared cache, the Hub
stand-in, `kit models pull`, and the errors for bad input."""

import json
import os
from pathlib import Path

import pytest

from fakehub import FakeHub
from kit.models import catalog
from kit.models.arch import FAMILIES, layout_from_config
from kitrun import kit

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def test_catalog_covers_the_popular_families():
    ids = catalog.all_ids()
    assert len(catalog.entries()) >= 25 and len(ids) >= 32
    for wanted in ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-405B-Instruct", "google/gemma-2-27b-it",
                   "mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x22B-Instruct-v0.1",
                   "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "tiiuae/falcon-7b",
                   "HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-3.3-70B-Instruct"):
        assert catalog.lookup(wanted) is not None, wanted


@pytest.mark.parametrize("entry", catalog.entries(), ids=lambda e: e["ids"][0])
def test_catalog_counts_equal_the_published_counts(entry):
    """kit's count from config.json equals the count published for the checkpoint."""
    layout = layout_from_config(entry["config"], entry["ids"][0])
    assert layout.params == entry["params"], entry["params_source"]
    assert layout.active_params == entry["active_params"], entry["params_source"]


def test_catalog_spans_twelve_architectures_with_tied_and_moe():
    entries = catalog.entries()
    types = {e["config"]["model_type"] for e in entries}
    assert len(types) >= 12 and types <= set(FAMILIES)
    assert any(layout_from_config(e["config"], "x").tied_embeddings for e in entries)
    moe = [e for e in entries if e["active_params"] < e["params"]]
    assert moe, "at least one mixture-of-experts model"


def test_show_catalog_model_json():
    r = kit("models", "show", "meta-llama/Llama-3.1-8B-Instruct", "--json", env=OFFLINE)
    d = r.json()
    assert d["params"] == 8_030_261_248 and d["active_params"] == d["params"]
    assert (d["num_layers"], d["hidden_size"], d["num_attention_heads"], d["num_kv_heads"], d["head_dim"]) == (32, 4096, 32, 8, 128)
    assert (d["vocab_size"], d["max_context"], d["tied_embeddings"], d["source"]) == (128256, 131072, False, "catalog")


def test_show_mixtral_reports_active_params():
    d = kit("models", "show", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--json", env=OFFLINE).json()
    assert d["params"] == 46_702_792_704
    assert d["active_params"] == 12_879_925_248  # attention, embeddings, norms, router + 2 of 8 experts
    assert d["num_experts"] == 8 and d["experts_per_token"] == 2


def tiny_model(path: Path, tied=False, **overrides) -> int:
    torch = pytest.importorskip("torch", reason="needs the [ml] extra")
    transformers = pytest.importorskip("transformers", reason="needs the [ml] extra")
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=tied, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_local_directory_counts_from_safetensors_headers(tmp_path, tied):
    expected = tiny_model(tmp_path / "m", tied=tied)
    d = kit("models", "show", str(tmp_path / "m"), "--json", env=OFFLINE).json()
    assert d["params"] == expected and d["params_from"] == "safetensors headers"
    assert d["source"] == "local" and d["tied_embeddings"] is tied and d["num_kv_heads"] == 2


def test_local_directory_plans(tmp_path):
    tiny_model(tmp_path / "m")
    r = kit("plan", "serve", str(tmp_path / "m"), "--site", "quest", "--json", env=OFFLINE)
    assert r.json()["fits"] and r.json()["gpus"] == 1


def test_directory_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    r = kit("models", "show", str(tmp_path / "empty"))
    assert r.code != 0 and "no config.json" in r.error_line and str(tmp_path / "empty") in r.error_line


def test_broken_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    r = kit("models", "show", str(tmp_path / "m"))
    assert r.code != 0 and "not valid JSON" in r.error_line


def test_unsupported_architecture_still_counts_safetensors(tmp_path):
    expected = tiny_model(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "mamba9"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    r = kit("models", "show", str(tmp_path / "m"), "--json")
    assert r.code == 1
    assert r.json()["params"] == expected
    assert "unsupported architecture 'mamba9'" in r.error_line and f"{expected:,}" in r.error_line
    plan = kit("plan", "serve", str(tmp_path / "m"), "--site", "quest")
    assert plan.code != 0 and "unsupported architecture" in plan.error_line


def test_unsupported_architecture_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mamba9", "architectures": ["Mamba9"]}))
    r = kit("models", "show", str(tmp_path / "m"))
    assert r.code != 0 and "unsupported architecture 'mamba9'" in r.error_line and "no safetensors" in r.error_line


def test_unknown_model():
    r = kit("models", "show", "nobody/no-such-model", env=OFFLINE)
    assert r.code != 0 and "unknown model 'nobody/no-such-model'" in r.error_line
    r = kit("plan", "serve", "./no/such/dir", "--site", "quest", env=OFFLINE)
    assert r.code != 0 and "no such directory" in r.error_line


@pytest.fixture
def hub(tmp_path):
    tiny_model(tmp_path / "hub" / "lab" / "tiny-llama")
    with FakeHub(tmp_path / "hub") as fake:
        yield fake


def hub_env(hub, **extra):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.update(extra)
    return env


def test_pull_into_a_shared_cache_once(hub, tmp_path):
    cache = tmp_path / "shared-cache"
    r = kit("models", "pull", "lab/tiny-llama", "--to", str(cache), env=hub_env(hub))
    assert r.code == 0, r.err
    snapshot = next((cache / "models--lab--tiny-llama" / "snapshots").iterdir())
    assert {p.name for p in snapshot.iterdir()} >= {"config.json", "model.safetensors"}
    first = len(hub.downloads)
    assert first >= 2
    again = kit("models", "pull", "lab/tiny-llama", "--to", str(cache), env=hub_env(hub))
    assert again.code == 0 and len(hub.downloads) == first, "a second pull downloads nothing"
    # Jobs and planning then find it in the cache, offline.
    d = kit("models", "show", "lab/tiny-llama", "--json", env={"HF_HUB_CACHE": str(cache)}).json()
    assert d["source"] == "cache" and d["params_from"] == "safetensors headers"


def test_site_model_cache_is_searched(hub, tmp_path):
    cache = tmp_path / "site-cache"
    kit("models", "pull", "lab/tiny-llama", "--to", str(cache), env=hub_env(hub))
    site = tmp_path / "mysite.yaml"
    site.write_text((Path(__file__).parents[1] / "site-configs" / "klc.yaml").read_text()
                    .replace("/kellogg/data/llm_models_opensource", str(cache)))
    d = kit("models", "show", "lab/tiny-llama", "--site", str(site), "--json", env=OFFLINE).json()
    assert d["source"] == "cache" and str(cache) in d["location"]


def test_show_from_the_hub_reads_config_only(hub):
    d = kit("models", "show", "lab/tiny-llama", "--json", env=hub_env(hub)).json()
    assert d["source"] == "hub" and d["num_layers"] == 2
    assert not any(name.endswith(".safetensors") for name in hub.downloads), "never download weights"


def test_pull_errors(hub, tmp_path):
    r = kit("models", "pull", "lab/missing", "--to", str(tmp_path / "c"), env=hub_env(hub))
    assert r.code != 0 and "no such model on the Hub" in r.error_line
    hub.gated.add("lab/tiny-llama")
    r = kit("models", "pull", "lab/tiny-llama", "--to", str(tmp_path / "c"), env=hub_env(hub))
    assert r.code != 0 and "gated" in r.error_line
    r = kit("models", "pull", "lab/tiny-llama", "--to", str(tmp_path / "c"),
            env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""})
    assert r.code != 0 and "cannot reach the Hugging Face Hub" in r.error_line
    r = kit("models", "pull", "lab/tiny-llama", "--to", str(tmp_path / "c"), env=OFFLINE)
    assert "HF_HUB_OFFLINE" in r.error_line


def test_pull_never_prints_the_token(hub, tmp_path):
    secret = "hf_kitTestSecretToken0123456789"
    r = kit("models", "pull", "lab/tiny-llama", "--to", str(tmp_path / "c"), env=hub_env(hub, HF_TOKEN=secret))
    assert r.code == 0 and secret not in r.out + r.err


def test_list_with_site_shows_the_smallest_allocation():
    r = kit("models", "list", "--site", "quest", "--json", env=OFFLINE)
    rows = {row["model"]: row for row in r.json()}
    assert len(rows) == len(catalog.all_ids())
    assert rows["meta-llama/Llama-3.1-8B-Instruct"]["serve"] == "1x a100-40"
    assert "bitsandbytes-nf4" in rows["meta-llama/Llama-3.1-405B-Instruct"]["serve"]
    human = kit("models", "list", "--site", "quest", env=OFFLINE)
    assert "Llama-3.1-70B-Instruct" in human.out and "a100-80" in human.out


def quantized_dir(path: Path, method: str, **fields) -> Path:
    """A config-only checkpoint directory of Qwen2.5-7B with a quantization_config."""
    cfg = dict(catalog.lookup("Qwen/Qwen2.5-7B-Instruct")["config"])
    cfg["quantization_config"] = {"quant_method": method, **fields}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_gptq_checkpoint_uses_its_bits_and_group_size(tmp_path):
    four = quantized_dir(tmp_path / "q4", "gptq", bits=4, group_size=128)
    eight = quantized_dir(tmp_path / "q8", "gptq", bits=8, group_size=128)
    p4 = kit("plan", "serve", str(four), "--site", "quest", "--json").json()
    p8 = kit("plan", "serve", str(eight), "--site", "quest", "--json").json()
    assert p4["quantize"] == p8["quantize"] == "gptq" and "--quantize" in p4["engine_args"]
    linear = 7_615_616_512 - 2 * 152_064 * 3584  # Qwen2.5-7B minus embeddings and lm_head (norms are tiny)
    # 8 bits instead of 4: half a byte more for every linear-layer parameter.
    difference = (p8["per_gpu"]["weights_gib"] - p4["per_gpu"]["weights_gib"]) * GIB_FLOAT
    assert difference == pytest.approx(linear * 0.5, rel=0.02)
    assert p8["per_gpu"]["weights_gib"] * GIB_FLOAT > linear * 1.0


GIB_FLOAT = float(1 << 30)


def test_quantized_checkpoint_refuses_another_quantization(tmp_path):
    awq = quantized_dir(tmp_path / "awq", "awq", bits=4, group_size=128)
    for other in ("none", "fp8"):
        r = kit("plan", "serve", str(awq), "--site", "quest", "--quantize", other)
        assert r.code != 0 and "is a awq checkpoint" in r.error_line


def test_account_scoped_cache_is_searched_with_the_default_account(tmp_path, monkeypatch):
    cache = tmp_path / "projects" / "p12345" / "hf_cache"
    snapshot = cache / "models--lab--tiny" / "snapshots" / "abc"
    tiny_model(snapshot)
    (cache / "models--lab--tiny" / "refs").mkdir()
    (cache / "models--lab--tiny" / "refs" / "main").write_text("abc")
    site = tmp_path / "site.yaml"
    site.write_text((Path(__file__).parents[1] / "site-configs" / "quest.yaml").read_text()
                    .replace("/projects/{account}/hf_cache", str(tmp_path / "projects" / "{account}" / "hf_cache")))
    r = kit("models", "show", "lab/tiny", "--site", str(site), "--json", env={"KIT_ACCOUNT": "p12345"})
    assert r.code == 0, r.err
    d = r.json()
    assert d["source"] == "cache"
    plan = kit("plan", "serve", "lab/tiny", "--site", str(site), "--account", "p12345", "--json").json()
    assert plan["fits"]


def test_mistral_consolidated_copy_is_not_counted_twice(tmp_path):
    expected = tiny_model(tmp_path / "m")
    import shutil

    shutil.copy(tmp_path / "m" / "model.safetensors", tmp_path / "m" / "consolidated.safetensors")
    d = kit("models", "show", str(tmp_path / "m"), "--json").json()
    assert d["params"] == expected and d["active_params"] == expected


def test_sharded_checkpoint_counts_the_files_its_index_names(tmp_path):
    expected = tiny_model(tmp_path / "m")
    import shutil

    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "m" / "model-00001-of-00001.safetensors")
    shutil.copy(tmp_path / "m" / "model-00001-of-00001.safetensors", tmp_path / "m" / "stale-copy.safetensors")
    from kit.models.safetensors_headers import read_header

    names = read_header(tmp_path / "m" / "model-00001-of-00001.safetensors")
    (tmp_path / "m" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))
    assert kit("models", "show", str(tmp_path / "m"), "--json").json()["params"] == expected


def test_config_that_is_not_utf8(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(b"\xff\xfe{}")
    r = kit("models", "show", str(tmp_path / "m"))
    assert r.code != 0 and "not a UTF-8 text file" in r.error_line and str(tmp_path / "m") in r.error_line


# --- no job without weights ----------------------------------------------------------------

SERVE = ("--site", "quest", "--account", "p12345", "--dry-run")


def test_a_config_only_snapshot_plans_but_is_never_served(hub):
    # Planning a Hub model caches its config.json: a snapshot without weights.
    assert kit("models", "show", "lab/tiny-llama", "--json", env=hub_env(hub)).json()["source"] == "hub"
    shown = kit("models", "show", "lab/tiny-llama", "--json", env=OFFLINE).json()
    assert shown["source"] == "cache" and "no weight files" in shown["missing_weights"]
    plan = kit("plan", "serve", "lab/tiny-llama", "--site", "quest", "--json", env=OFFLINE)
    assert plan.code == 0 and plan.json()["fits"], plan.err
    r = kit("serve", "lab/tiny-llama", *SERVE, env=OFFLINE)
    assert r.code != 0 and "no weight files" in r.error_line and "`kit models pull lab/tiny-llama` first" in r.error_line
    assert "#SBATCH" not in r.out
    # Once pulled, the same snapshot is a model: served offline.
    assert kit("models", "pull", "lab/tiny-llama", "--to", os.environ["HF_HUB_CACHE"], env=hub_env(hub)).code == 0
    served = kit("serve", "lab/tiny-llama", *SERVE, env=OFFLINE)
    assert served.code == 0, served.err
    assert "HF_HUB_OFFLINE=1" in served.out


def cached_repo(cache: Path, repo: str, files: dict[str, bytes | str]) -> Path:
    """A snapshot in an HF cache laid out as huggingface_hub writes it (links into blobs/)."""
    import hashlib

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / "abc"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text("abc")
    for name, data in files.items():
        data = data.encode() if isinstance(data, str) else data
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_a_snapshot_missing_a_shard_is_refused_and_served_once_complete(tmp_path):
    tiny_model(tmp_path / "m")
    from kit.models.safetensors_headers import read_header

    names = sorted(read_header(tmp_path / "m" / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: f"model-0000{1 + (i % 2)}-of-00002.safetensors"
                                             for i, n in enumerate(names)}}
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    cache = Path(os.environ["HF_HUB_CACHE"])
    snapshot = cached_repo(cache, "lab/sharded", {
        "config.json": (tmp_path / "m" / "config.json").read_text(),
        "model.safetensors.index.json": json.dumps(index),
        "model-00001-of-00002.safetensors": weights})
    assert kit("plan", "serve", "lab/sharded", "--site", "quest", "--json").json()["fits"]
    r = kit("serve", "lab/sharded", *SERVE)
    assert r.code != 0 and "1 of 2 weight shards missing (model-00002-of-00002.safetensors)" in r.error_line
    assert "kit models pull lab/sharded" in r.error_line
    # A link whose blob is gone (an interrupted download) is missing too.
    (snapshot / "model-00002-of-00002.safetensors").symlink_to("../../blobs/not-downloaded")
    assert "1 of 2 weight shards missing" in kit("serve", "lab/sharded", *SERVE).error_line
    (cache / "models--lab--sharded" / "blobs" / "not-downloaded").write_bytes(weights)
    served = kit("serve", "lab/sharded", *SERVE)
    assert served.code == 0 and str(snapshot) in served.out, served.err


def test_the_complete_snapshot_wins_over_a_config_only_one(tmp_path):
    tiny_model(tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_text()
    site_cache = tmp_path / "site-cache"
    cached_repo(site_cache, "lab/tiny", {"config.json": config})
    full = cached_repo(Path(os.environ["HF_HUB_CACHE"]), "lab/tiny", {
        "config.json": config, "model.safetensors": (tmp_path / "m" / "model.safetensors").read_bytes()})
    site = tmp_path / "mysite.yaml"
    site.write_text((Path(__file__).parents[1] / "site-configs" / "klc.yaml").read_text()
                    .replace("/kellogg/data/llm_models_opensource", str(site_cache)))
    d = kit("models", "show", "lab/tiny", "--site", str(site), "--json").json()
    assert d["location"] == str(full) and d["missing_weights"] is None


def test_a_cached_adapter_needs_its_weights():
    from kit.errors import KitError
    from kit.jobs.adapters import adapter_specs
    from kit.engines import engine

    cache = Path(os.environ["HF_HUB_CACHE"])
    config = json.dumps({"r": 8, "peft_type": "LORA"})
    cached_repo(cache, "lab/no-weights-lora", {"adapter_config.json": config})
    with pytest.raises(KitError, match=r"--adapter lab/no-weights-lora: the cached snapshot has no adapter weights "
                                       r".*`kit models pull lab/no-weights-lora` first"):
        adapter_specs(["lab/no-weights-lora"], engine("vllm"), offline=True)
    snapshot = cached_repo(cache, "lab/legal-lora", {"adapter_config.json": config,
                                                     "adapter_model.safetensors": b"weights"})
    adapters, rank, _ = adapter_specs(["lab/legal-lora"], engine("vllm"), offline=True)
    bind_root = snapshot.parent.parent
    assert adapters[0]["spec"] == f"legal-lora={snapshot}" and adapters[0]["bind"] == f"{bind_root}:{bind_root}:ro"


# --- network failures: one line naming the model and what to do ------------------------------

@pytest.mark.parametrize("mode, what", [("drop", "dropped the connection"), ("silent", "did not answer in time")])
def test_network_failures_are_one_line(mode, what, tmp_path):
    from httpstub import NetworkFault

    with NetworkFault(mode) as fault:
        env = {"HF_ENDPOINT": fault.url, "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
               "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        pull = kit("models", "pull", "lab/tiny-llama", "--to", str(tmp_path / "c"), env=env, timeout=60)
        assert pull.code == 2, pull.err
        line = pull.error_line
        assert line.startswith("kit: error: lab/tiny-llama: download failed:") and what in line, line
        assert fault.url in line and "run `kit models pull` again" in line
        for args in (("models", "show", "lab/tiny-llama"), ("plan", "serve", "lab/tiny-llama", "--site", "quest")):
            r = kit(*args, env=env, timeout=60)
            assert r.code == 2 and "lab/tiny-llama: Hub request failed:" in r.error_line and what in r.error_line
            assert "check the network" in r.error_line
        # A catalog model still plans from the catalog when the Hub fails.
        ok = kit("plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--json", env=env, timeout=60)
        assert ok.code == 0 and ok.json()["fits"]
