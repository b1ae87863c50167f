"""kit's closed-form parameter counts equal what transformers builds, for every family.

Small configs that exercise each family's traps (GQA, MQA, head_dim overrides, biases,
tied embeddings, MoE routers, qk-norms), instantiated on the meta device: no weights.
"""

import pytest

from kit.models.arch import FAMILIES, layout_from_config

BASE = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)

CASES = {
    "llama": dict(BASE, model_type="llama"),
    "llama-bias-tied": dict(BASE, model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "llama-head_dim": dict(BASE, model_type="llama", head_dim=16),
    "mistral": dict(BASE, model_type="mistral", head_dim=12),
    "qwen2": dict(BASE, model_type="qwen2"),
    "qwen2-tied": dict(BASE, model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(BASE, model_type="qwen3", head_dim=16),
    "gemma": dict(BASE, model_type="gemma", head_dim=16),
    "gemma2": dict(BASE, model_type="gemma2", head_dim=24),
    "olmo": dict(BASE, model_type="olmo"),
    "olmo2": dict(BASE, model_type="olmo2"),
    "phi3": dict(BASE, model_type="phi3", pad_token_id=0),
    "phi": dict(BASE, model_type="phi", num_key_value_heads=8),
    "phi-qk": dict(BASE, model_type="phi", num_key_value_heads=8, qk_layernorm=True),
    "mixtral": dict(BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "falcon-7b-style": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, vocab_size=1000,
                            model_type="falcon", multi_query=True, parallel_attn=True, bias=False,
                            new_decoder_architecture=False),
    "falcon-40b-style": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_kv_heads=2,
                             vocab_size=1000, model_type="falcon", new_decoder_architecture=True, bias=False),
    "falcon-rw-style": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, vocab_size=1000,
                            model_type="falcon", multi_query=False, parallel_attn=False, bias=True,
                            new_decoder_architecture=False),
    "gpt_neox": dict(BASE, model_type="gpt_neox", num_key_value_heads=None),
    "starcoder2": dict(BASE, model_type="starcoder2", bos_token_id=0, eos_token_id=0),
}


def meta_count(cfg: dict) -> int:
    torch = pytest.importorskip("torch", reason="needs the [ml] extra (torch)")
    transformers = pytest.importorskip("transformers", reason="needs the [ml] extra (transformers)")
    conf = transformers.CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type" and v is not None})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(conf)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_matches_transformers(name):
    cfg = {k: v for k, v in CASES[name].items() if v is not None}
    assert layout_from_config(cfg, name).params == meta_count(cfg)


def test_every_family_is_covered():
    assert {c["model_type"] for c in CASES.values()} == set(FAMILIES)


def test_mixtral_active_params_count_two_of_four_experts():
    cfg = CASES["mixtral"]
    layout = layout_from_config(cfg, "mixtral")
    expert = 3 * 64 * 160
    assert layout.params - layout.active_params == 3 * 2 * expert
