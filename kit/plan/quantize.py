"""Which quantization a serve plan uses: the user's choice checked against the engine and the
checkpoint, and the suggestion when nothing fits. The facts are in memory.yaml and engines.yaml."""

from __future__ import annotations

from kit.errors import KitError
from kit.models.resolve import ModelInfo
from kit.plan.memory import constants


def choices() -> list[str]:
    """Every quantization kit plans (memory.yaml's ``quantizations``)."""
    return list(constants()["quantizations"])


def resolve_quantize(model: ModelInfo, quantize: str | None, engine_name: str, engine: dict) -> str:
    """The quantization to plan: the user's, or the checkpoint's own (``quantization_config``)."""
    own = checkpoint_quantization(model)
    if own and quantize not in (None, own):
        raise KitError(f"--quantize {quantize}: {model.name} is a {own} checkpoint; leave --quantize out or give {own}")
    if quantize is None:
        quantize = own or "none"
    if quantize not in choices():
        raise KitError(f"--quantize {quantize}: allowed values are {', '.join(choices())}")
    if quantize != "none" and quantize not in engine["quantize"]:
        allowed = ", ".join(["none", *engine["quantize"]])
        raise KitError(f"--quantize {quantize}: not available with --engine {engine_name} "
                       f"{engine['version']} (allowed: {allowed})")
    q = constants()["quantizations"][quantize]
    if not q["on_the_fly"] and own != quantize:
        raise KitError(f"--quantize {quantize}: needs a pre-quantized {quantize.upper()} checkpoint, and "
                       f"{model.name} is not one; use a {quantize.upper()} repo or --quantize bitsandbytes-nf4")
    return quantize


def checkpoint_quantization(model: ModelInfo) -> str | None:
    q = model.quantization
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    c = constants()
    if q.get("load_in_4bit") and method in c["checkpoint_4bit"]:
        return c["checkpoint_4bit"][method]
    if method in c["checkpoint_methods"]:
        return c["checkpoint_methods"][method]
    raise KitError(f"{model.name}: checkpoint quantization {method!r} is not planned by kit "
                   f"(known: {', '.join(c['checkpoint_methods'])})")


