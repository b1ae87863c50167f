"""LoRA adapters for a serving job: local directories and cached Hub adapters are bound
read-only; other Hub ids go to the engine in the form engines.yaml gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kit.errors import KitError
from kit.models.resolve import HUB_ID

# What makes two checkpoints the same model for an adapter: the config.json keys of its shapes.
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "num_local_experts", "num_experts")


def adapter_config(path: Path, ref: str) -> dict:
    config = path / "adapter_config.json"
    if not config.is_file():
        raise KitError(f"--adapter {ref}: no adapter_config.json (a PEFT LoRA adapter directory)")
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise KitError(f"--adapter {ref}: adapter_config.json is not valid")
    return data


def adapter_rank(path: Path, ref: str) -> int:
    """The adapter's largest LoRA rank: ``r``, or a larger one in ``rank_pattern``."""
    data = adapter_config(path, ref)
    try:
        ranks = [int(data.get("r") or 16)] + [int(r) for r in (data.get("rank_pattern") or {}).values()]
    except (ValueError, TypeError, AttributeError):
        raise KitError(f"--adapter {ref}: adapter_config.json is not valid (r, rank_pattern)") from None
    return max(ranks)


def _hub_id(name: str) -> str | None:
    """``org/name`` for a Hub id, or for a path inside an HF cache (models--org--name/snapshots/REV)."""
    if HUB_ID.match(name) and not Path(name).expanduser().exists():
        return name
    for part in Path(name).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
    return None


def _shape(config: dict) -> dict:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    return {k: text.get(k) for k in SHAPE_KEYS if text.get(k) is not None}


def base_problem(path: Path, ref: str, model, site=None, account: str | None = None) -> tuple[str | None, str | None]:
    """(error, warning) about serving the adapter at ``path`` on ``model``: its
    adapter_config.json's base_model_name_or_path must be the same model, which is the same Hub
    id, the same directory, or, where either side is a directory, a config.json of the same
    architecture and shapes (a copy). Two different Hub ids are different models."""
    base = adapter_config(path, ref).get("base_model_name_or_path")
    if not base or not isinstance(base, str) or model is None:
        return None, None
    if model.source == "local" and Path(base).expanduser().is_dir() and \
            Path(base).expanduser().resolve() == Path(model.location).resolve():
        return None, None
    served_id = model.name if model.source in ("cache", "hub", "catalog") else _hub_id(model.location)
    base_id = _hub_id(base)
    if served_id and base_id and served_id == base_id:
        return None, None
    mismatch = f"--adapter {ref}: trained on {base}, not on the served model {model.name}"
    if served_id and base_id:
        return mismatch + " (serve it with that base model)", None
    from kit.models.resolve import resolve

    try:
        base_info = resolve(base, site, account, use_hub=False)
    except KitError:
        return None, f"--adapter {ref}: its base model {base} is not found here, so kit cannot check that it is {model.name}"
    if _shape(base_info.config) != _shape(model.config):
        return mismatch + " (a model of another architecture or size; serve it with its base model)", None
    return None, None


def adapter_specs(refs: list[str], engine: dict, site=None, account: str | None = None,
                  offline: bool = False, model=None) -> tuple[list[dict], int | None, list[str]]:
    """Local adapter directories (and Hub adapters found in the shared cache) are bound read-only
    and passed as name=path; other Hub ids are passed for the engine to download, in the form
    engines.yaml gives (TGI takes a bare id: `name=...` means a local path), which needs a job
    that is not offline. A local adapter trained on another base than ``model`` is an error."""
    from kit.models.resolve import find_cached, missing_weights

    adapters, ranks, warnings = [], [], []
    for ref in refs:
        local = Path(ref).expanduser()
        snapshot = None if local.exists() or not HUB_ID.match(ref) else find_cached(ref, site, account, "adapter")
        if snapshot is not None and (missing := missing_weights(snapshot, "adapter")):
            raise KitError(f"--adapter {ref}: the cached snapshot has {missing}: `kit models pull {ref}` first")
        if local.exists():
            path = bind_root = local.resolve()
            name = path.name
            if not (path / "adapter_config.json").exists() and (path / "adapter" / "adapter_config.json").exists():
                path = bind_root = path / "adapter"  # a fine-tuning run's output directory
            elif path.name == "adapter" and (path.parent / "summary.json").exists():
                name = path.parent.name  # OUTPUT_DIR/adapter: named after the run
        elif snapshot is not None:
            path, bind_root = snapshot, snapshot.parent.parent  # a snapshot needs its blobs
            name = ref.split("/")[-1]
        elif HUB_ID.match(ref):
            if offline:
                raise KitError(f"--adapter {ref}: not in the shared model cache, and this job runs offline "
                               f"(the model is local): `kit models pull {ref}` first")
            hub = engine["serve"]["hub_adapter"]
            fields = {"id": ref, "name": ref.split("/")[-1]}
            adapters.append({"name": hub["name"].format(**fields), "spec": hub["spec"].format(**fields), "bind": None})
            warnings.append(f"--adapter {ref}: a Hub adapter; its rank is unknown here, so LoRA rank up to 64 is allowed")
            ranks.append(64)
            continue
        else:
            raise KitError(f"--adapter {ref}: neither an existing directory nor a Hub id (org/name)")
        ranks.append(adapter_rank(path, ref))
        error, warning = base_problem(path, ref, model, site, account)
        if error:
            raise KitError(error)
        warnings += [warning] if warning else []
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        adapters.append({"name": name, "spec": f"{name}={path}", "bind": f"{bind_root}:{bind_root}:ro"})
    names = [a["name"] for a in adapters]
    if len(set(names)) != len(names):
        raise KitError(f"--adapter: two adapters share the name {next(n for n in names if names.count(n) > 1)!r}")
    max_rank = None
    if ranks and engine["serve"].get("lora_ranks"):
        allowed = engine["serve"]["lora_ranks"]
        max_rank = next((r for r in allowed if r >= max(ranks)), None)
        if max_rank is None:
            raise KitError(f"--adapter: LoRA rank {max(ranks)} is above the engine's maximum {allowed[-1]}")
    return adapters, max_rank, warnings


