"""Exact parameter counts from a config.json, per architecture (``model_type``).

Each family describes one decoder layer as a list of linear layers (name as the module is
called in transformers, so ``--lora-targets`` can use the same names), plus its norm
parameters and the embeddings. Counts are exact: they match safetensors totals and
``transformers`` meta-device instantiation (tested). Rules and sources:
research notes, memory.md §3 (per-layer formulas), and the transformers modelling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kit.errors import KitError


@dataclass(frozen=True)
class Linear:
    name: str
    d_in: int
    d_out: int
    bias: bool = False
    experts: int = 0  # 0: dense; E: one copy per expert (MoE)

    @property
    def params(self) -> int:
        one = self.d_in * self.d_out + (self.d_out if self.bias else 0)
        return one * max(1, self.experts)


@dataclass(frozen=True)
class Layout:
    """What one model holds, enough for exact counts and for the memory model."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    layer_linears: tuple[Linear, ...]
    layer_other: int  # norms, qk-norms, router: not quantized, replicated under TP
    global_other: int  # final norm (+ lm_head bias)
    num_experts: int = 0
    experts_per_token: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear layers (what quantization shrinks)."""
        return self.num_layers * sum(lin.params for lin in self.layer_linears)

    @property
    def params(self) -> int:
        return (
            self.linear_params
            + self.num_layers * self.layer_other
            + self.global_other
            + self.embedding_params
            + self.lm_head_params
        )

    @property
    def active_params(self) -> int:
        if not self.num_experts:
            return self.params
        idle = self.num_experts - self.experts_per_token
        per_expert = sum(lin.params // lin.experts for lin in self.layer_linears if lin.experts)
        return self.params - self.num_layers * idle * per_expert

    def linear_names(self) -> list[str]:
        return [lin.name for lin in self.layer_linears]


def _get(cfg: dict, key: str, default=None):
    value = cfg.get(key)
    return default if value is None else value


def _common(cfg: dict, kv_default: int | None = None) -> dict:
    h = int(cfg["hidden_size"])
    a = int(cfg["num_attention_heads"])
    k = int(_get(cfg, "num_key_value_heads", kv_default or a))
    d = int(_get(cfg, "head_dim", h // a))
    return dict(h=h, a=a, k=k, d=d, L=int(cfg["num_hidden_layers"]), V=int(cfg["vocab_size"]))


def _attention(c: dict, qkv_bias: bool, o_bias: bool) -> list[Linear]:
    h, a, k, d = c["h"], c["a"], c["k"], c["d"]
    return [
        Linear("q_proj", h, a * d, qkv_bias),
        Linear("k_proj", h, k * d, qkv_bias),
        Linear("v_proj", h, k * d, qkv_bias),
        Linear("o_proj", a * d, h, o_bias),
    ]


def _gated_mlp(h: int, i: int, bias: bool = False) -> list[Linear]:
    return [Linear("gate_proj", h, i, bias), Linear("up_proj", h, i, bias), Linear("down_proj", i, h, bias)]


def _layout(cfg, c, linears, layer_other, global_other, tied_default, i, **kw) -> Layout:
    return Layout(
        num_layers=c["L"],
        hidden_size=c["h"],
        intermediate_size=i,
        num_attention_heads=c["a"],
        num_kv_heads=c["k"],
        head_dim=c["d"],
        vocab_size=c["V"],
        tied_embeddings=bool(_get(cfg, "tie_word_embeddings", tied_default)),
        layer_linears=tuple(linears),
        layer_other=layer_other,
        global_other=global_other,
        **kw,
    )


def llama_like(cfg: dict, *, qkv_bias_default=False, norms_per_layer=2, qk_norm=None, final_norm=True,
               tied_default=False, kv_default=None) -> Layout:
    """Llama, Mistral, Qwen2/3, Gemma 1/2, OLMo 1/2, SmolLM, DeepSeek-R1 distills."""
    c = _common(cfg, kv_default)
    h, i = c["h"], int(cfg["intermediate_size"])
    attn_bias = bool(_get(cfg, "attention_bias", qkv_bias_default))
    linears = _attention(c, attn_bias, attn_bias)
    linears += _gated_mlp(h, i, bool(_get(cfg, "mlp_bias", False)))
    other = norms_per_layer * h
    if qk_norm == "head":  # Qwen3: RMSNorm over head_dim, shared by heads
        other += 2 * c["d"]
    elif qk_norm == "full":  # OLMo 2: RMSNorm over all heads
        other += c["a"] * c["d"] + c["k"] * c["d"]
    return _layout(cfg, c, linears, other, h if final_norm else 0, tied_default, i)


def qwen2(cfg: dict) -> Layout:
    # Qwen2 always has q/k/v bias (no config flag) and no o_proj bias.
    c = _common(cfg)
    h, i = c["h"], int(cfg["intermediate_size"])
    linears = _attention(c, True, False) + _gated_mlp(h, i)
    return _layout(cfg, c, linears, 2 * h, h, False, i)


def mixtral(cfg: dict) -> Layout:
    c = _common(cfg, kv_default=8)
    h, i = c["h"], int(cfg["intermediate_size"])
    e, top = int(cfg["num_local_experts"]), int(cfg["num_experts_per_tok"])
    linears = _attention(c, False, False) + [
        Linear("w1", h, i, experts=e),
        Linear("w2", i, h, experts=e),
        Linear("w3", h, i, experts=e),
    ]
    router = h * e  # block_sparse_moe.gate, no bias; counted active, not quantized by most engines
    return _layout(cfg, c, linears, 2 * h + router, h, False, i, num_experts=e, experts_per_token=top)


def phi3(cfg: dict) -> Layout:
    # Fused qkv_proj and gate_up_proj: same counts as the split form.
    c = _common(cfg)
    h, a, k, d, i = c["h"], c["a"], c["k"], c["d"], int(cfg["intermediate_size"])
    linears = [
        Linear("qkv_proj", h, (a + 2 * k) * d),
        Linear("o_proj", a * d, h),
        Linear("gate_up_proj", h, 2 * i),
        Linear("down_proj", i, h),
    ]
    return _layout(cfg, c, linears, 2 * h, h, False, i)


def phi(cfg: dict) -> Layout:
    # Phi-1/1.5/2: biased q/k/v/dense, GELU fc1/fc2, one LayerNorm (w+b) per layer, biased lm_head.
    c = _common(cfg)
    h, i = c["h"], int(cfg["intermediate_size"])
    linears = _attention(c, True, True)
    linears[-1] = Linear("dense", linears[-1].d_in, h, True)
    linears += [Linear("fc1", h, i, True), Linear("fc2", i, h, True)]
    other = 2 * h
    if cfg.get("qk_layernorm"):
        other += 2 * 2 * c["d"]
    tied = bool(_get(cfg, "tie_word_embeddings", False))
    global_other = 2 * h + (0 if tied else c["V"])  # final LayerNorm w+b, lm_head bias
    return _layout(cfg, c, linears, other, global_other, False, i)


def falcon(cfg: dict) -> Layout:
    h, a = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    d = h // a
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:
        k = int(_get(cfg, "num_kv_heads", a))
    else:
        k = 1 if _get(cfg, "multi_query", True) else a
    bias = bool(cfg.get("bias", False))
    i = int(_get(cfg, "ffn_hidden_size", 4 * h))
    linears = [
        Linear("query_key_value", h, (a + 2 * k) * d, bias),
        Linear("dense", h, h, bias),
        Linear("dense_h_to_4h", h, i, bias),
        Linear("dense_4h_to_h", i, h, bias),
    ]
    if new_arch:
        n_ln = int(_get(cfg, "num_ln_in_parallel_attn", 2))
    else:
        n_ln = 1 if _get(cfg, "parallel_attn", True) else 2
    c = dict(h=h, a=a, k=k, d=d, L=int(cfg["num_hidden_layers"]), V=int(cfg["vocab_size"]))
    notes = ("multi-query attention: one KV head, replicated on every shard",) if k == 1 else ()
    return _layout(cfg, c, linears, n_ln * 2 * h, 2 * h, True, i, notes=notes)


def gpt_neox(cfg: dict) -> Layout:
    c = _common(cfg)
    h, i = c["h"], int(cfg["intermediate_size"])
    bias = bool(_get(cfg, "attention_bias", True))
    linears = [
        Linear("query_key_value", h, 3 * h, bias),
        Linear("dense", h, h, bias),
        Linear("dense_h_to_4h", h, i, True),
        Linear("dense_4h_to_h", i, h, True),
    ]
    return _layout(cfg, c, linears, 4 * h, 2 * h, False, i)


def starcoder2(cfg: dict) -> Layout:
    c = _common(cfg)
    h, i = c["h"], int(cfg["intermediate_size"])
    bias = bool(_get(cfg, "use_bias", True))
    linears = _attention(c, bias, bias) + [Linear("c_fc", h, i, bias), Linear("c_proj", i, h, bias)]
    norm = 2 * h  # LayerNorm weight + bias
    return _layout(cfg, c, linears, 2 * norm, norm, True, i)


FAMILIES: dict[str, Callable[[dict], Layout]] = {
    "llama": llama_like,
    "mistral": lambda cfg: llama_like(cfg, kv_default=8),
    "qwen2": qwen2,
    "qwen3": lambda cfg: llama_like(cfg, qk_norm="head"),
    "gemma": lambda cfg: llama_like(cfg, tied_default=True),
    "gemma2": lambda cfg: llama_like(cfg, norms_per_layer=4, tied_default=True),
    "olmo": lambda cfg: llama_like(cfg, norms_per_layer=0, final_norm=False),
    "olmo2": lambda cfg: llama_like(cfg, qk_norm="full"),
    "phi3": phi3,
    "phi": phi,
    "mixtral": mixtral,
    "falcon": falcon,
    "gpt_neox": gpt_neox,
    "starcoder2": starcoder2,
}


# Context lengths for families whose config.json does not state one (what they were trained at).
DEFAULT_CONTEXT: dict[str, int] = {
    "falcon": 2048,  # Falcon's config has no max_position_embeddings
}


def max_context(cfg: dict) -> int | None:
    """The longest sequence a config allows, from whichever key its family uses."""
    value = cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("max_sequence_length")
    value = value or DEFAULT_CONTEXT.get(cfg.get("model_type") or "")
    return int(value) if value else None


class UnsupportedArchitecture(KitError):
    pass


def layout_from_config(cfg: dict, where: str) -> Layout:
    model_type = cfg.get("model_type")
    family = FAMILIES.get(model_type or "")
    if family is None:
        arch = model_type or ",".join(cfg.get("architectures") or []) or "unknown"
        raise UnsupportedArchitecture(
            f"{where}: unsupported architecture {arch!r} (supported model_type: {', '.join(sorted(FAMILIES))})"
        )
    try:
        return family(cfg)
    except KeyError as e:
        raise KitError(f"{where}: config.json lacks {e.args[0]!r}, needed for model_type {model_type!r}") from None
    except (TypeError, ValueError) as e:
        raise KitError(f"{where}: config.json has a bad value for model_type {model_type!r}: {e}") from None
