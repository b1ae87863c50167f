"""Find a model's config and exact parameter count.

Sources in order: a local directory (config.json, safetensors headers), the shared HF cache
(the site's model cache, then ``HF_HUB_CACHE``), the Hub (config.json and safetensors
metadata only, never weights; tried only when it answers quickly), and the packaged catalog.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError
from kit.models import catalog
from kit.models.arch import Layout, UnsupportedArchitecture, layout_from_config, max_context
from kit.models.hub import HubUnreachable, hub_errors, hub_reachable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SERVE_DTYPES = ("bfloat16", "float16")


@dataclass
class ModelInfo:
    name: str
    source: str  # "local", "cache", "hub", "catalog"
    location: str
    config: dict
    layout: Layout | None
    params: int
    active_params: int
    params_from: str
    dtype: str
    max_context: int | None
    quantization: dict | None = None
    warnings: list[str] = field(default_factory=list)
    # A cached snapshot may hold only metadata (planning a Hub model downloads its config.json):
    # why its weights are not all there, else None. A job cannot serve such a snapshot.
    missing_weights: str | None = None

    def require_layout(self) -> Layout:
        if self.layout is None:
            raise UnsupportedArchitecture(self.warnings[0] if self.warnings else f"{self.name}: unsupported")
        return self.layout

    def as_dict(self) -> dict:
        lay = self.layout
        out = {
            "model": self.name,
            "source": self.source,
            "location": self.location,
            "architecture": self.config.get("model_type"),
            "params": self.params,
            "active_params": self.active_params,
            "params_from": self.params_from,
            "dtype": self.dtype,
            "max_context": self.max_context,
            "quantization": (self.quantization or {}).get("quant_method"),
            "missing_weights": self.missing_weights,
        }
        if lay is not None:
            out.update(
                num_layers=lay.num_layers,
                hidden_size=lay.hidden_size,
                intermediate_size=lay.intermediate_size,
                num_attention_heads=lay.num_attention_heads,
                num_kv_heads=lay.num_kv_heads,
                head_dim=lay.head_dim,
                vocab_size=lay.vocab_size,
                tied_embeddings=lay.tied_embeddings,
                num_experts=lay.num_experts,
                experts_per_token=lay.experts_per_token,
                linear_modules=lay.linear_names(),
            )
        else:
            cfg = self.config
            out.update(
                num_layers=cfg.get("num_hidden_layers"),
                hidden_size=cfg.get("hidden_size"),
                num_attention_heads=cfg.get("num_attention_heads"),
                num_kv_heads=cfg.get("num_key_value_heads", cfg.get("num_attention_heads")),
                head_dim=cfg.get("head_dim"),
                vocab_size=cfg.get("vocab_size"),
                tied_embeddings=cfg.get("tie_word_embeddings"),
            )
        out["warnings"] = list(self.warnings)
        return out


def cache_dirs(site=None, account: str | None = None) -> list[Path]:
    """The shared model cache of the site, then the user's HF cache."""
    from kit.sites import account_path

    dirs: list[Path] = []
    if site is not None:
        shared = account_path(site, site.paths.model_cache, account, "model cache", required=False)
        if shared is not None:
            dirs.append(Path(shared))
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    dirs.append(Path(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub")))
    return dirs


def resolve(name: str, site=None, account: str | None = None, *, use_hub: bool | None = None) -> ModelInfo:
    path = Path(name).expanduser()
    if path.is_dir():
        return from_directory(path, name, "local")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise KitError(f"model {name!r}: no such directory")
    if not HUB_ID.match(name):
        raise KitError(
            f"unknown model {name!r}: give a Hub id like org/name, a local directory, "
            f"or a catalog model (see `kit models list`)"
        )
    snapshot = find_cached(name, site, account)
    if snapshot is not None:
        return from_directory(snapshot, name, "cache")
    hub_error = None
    if use_hub if use_hub is not None else hub_reachable():
        try:
            return from_hub(name)
        except HubUnreachable:
            if catalog.lookup(name) is None:
                raise
        except KitError as e:
            hub_error = str(e)
    entry = catalog.lookup(name)
    if entry is not None:
        return from_catalog(name, entry)
    where = "not in the shared cache, " + (f"not on the Hub ({hub_error}), " if hub_error else "the Hub is not reachable, ")
    raise KitError(f"unknown model {name!r}: {where}and not in kit's catalog (see `kit models list`)")


# What a cached snapshot must hold to be served, by kind: the file that names it, and its weights.
SNAPSHOT_CONFIG = {"model": "config.json", "adapter": "adapter_config.json"}
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's names; both engines read either


def find_cached(repo_id: str, site=None, account: str | None = None, kind: str = "model") -> Path | None:
    """The repo's snapshot in the shared caches (see cache_dirs): the first whose weights are
    all there, else the first that has only its metadata (see missing_weights)."""
    found = [snap for cache in cache_dirs(site, account) if (snap := cached_snapshot(repo_id, cache, kind))]
    return next((snap for snap in found if missing_weights(snap, kind) is None), found[0] if found else None)


def cached_snapshot(repo_id: str, cache_dir: Path, kind: str = "model") -> Path | None:
    """The snapshot directory of a repo in an HF cache (``models--org--name/snapshots/REV``)."""
    if not (cache_dir / ("models--" + repo_id.replace("/", "--"))).is_dir():
        return None  # not cached: skip importing huggingface_hub (~0.3 s on a login node)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, SNAPSHOT_CONFIG[kind], cache_dir=str(cache_dir))
    return Path(found).parent if isinstance(found, str) else None


def missing_weights(snapshot: Path, kind: str = "model") -> str | None:
    """Why a snapshot is not a servable model (or adapter), else None: a model needs every
    shard its safetensors index names, or (unsharded) its safetensors files; an adapter needs
    its adapter weights. Files of an HF cache are links to blobs: a missing blob counts as absent."""
    if kind == "adapter":
        return None if any((snapshot / f).is_file() for f in ADAPTER_WEIGHTS) else \
            f"no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    index = snapshot / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"an unreadable {index.name}"
        absent = [s for s in shards if not (snapshot / s).is_file()]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            return f"{len(absent)} of {len(shards)} weight shards missing ({absent[0]}{more})"
        return None
    if any(p.is_file() for p in snapshot.glob("*.safetensors")):
        return None
    return "no weight files (*.safetensors), only metadata"


def load_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise KitError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KitError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as e:
        raise KitError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise KitError(f"{path}: config.json must be a JSON object")
    return text_config(data)


def text_config(cfg: dict) -> dict:
    """Multimodal wrappers keep the language model in ``text_config``."""
    inner = cfg.get("text_config")
    if isinstance(inner, dict) and "hidden_size" in inner and "hidden_size" not in cfg:
        merged = dict(inner)
        merged.setdefault("quantization_config", cfg.get("quantization_config"))
        return merged
    return cfg


def from_directory(directory: Path, name: str, source: str) -> ModelInfo:
    from kit.models.safetensors_headers import count_parameters

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise KitError(f"{directory}: no config.json (a model directory needs the Hugging Face config.json)")
    cfg = load_config(config_path)
    warnings: list[str] = []
    try:
        layout = layout_from_config(cfg, str(config_path))
    except UnsupportedArchitecture as e:
        layout, warnings = None, [str(e)]
    # A cached snapshot may hold only metadata (or some shards): plan from its config alone.
    missing = missing_weights(directory) if source == "cache" else None
    tied = cfg.get("tie_word_embeddings", layout.tied_embeddings if layout else None)
    counted = None if missing else count_parameters(directory, tied)
    quant = cfg.get("quantization_config")
    if layout is not None and (counted is None or quant):
        # Quantized checkpoints pack several weights per stored element: count from the config.
        params, active, params_from = layout.params, layout.active_params, "config.json"
    elif counted is not None:
        params = counted[0]
        active = params - (layout.params - layout.active_params) if layout else params
        params_from = "safetensors headers"
        if layout is not None and params != layout.params:
            warnings.append(f"{directory}: safetensors hold {params:,} parameters, config implies {layout.params:,}")
    else:
        raise KitError(warnings[0] + "; and there are no safetensors files to count parameters from")
    if layout is None:
        warnings[0] += f"; parameters counted from safetensors headers ({params:,})"
        if quant:
            warnings.append(f"{directory}: a quantized checkpoint: the stored count is of packed tensors")
    if missing:
        warnings.append(f"{name}: the cached snapshot {directory} has {missing}: metadata for planning only; "
                        f"`kit models pull {name}` before serving it")
    info = make_info(name, source, str(directory), cfg, layout, params, active, params_from, warnings)
    info.missing_weights = missing
    return info


def from_hub(repo_id: str) -> ModelInfo:
    from huggingface_hub import constants, get_hf_file_metadata, get_safetensors_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError, SafetensorsParsingError

    with hub_errors(repo_id):
        # One quick look first: when that fails, hf_hub_download retries for minutes (60 s timeouts).
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
        cfg = load_config(Path(hf_hub_download(repo_id, "config.json")))
        try:
            meta = get_safetensors_metadata(repo_id)
            counted = sum(meta.parameter_count.values())
        except (HfHubHTTPError, NotASafetensorsRepoError, SafetensorsParsingError, OSError, ValueError):
            counted = None  # the config alone gives the count for supported architectures
    warnings: list[str] = []
    try:
        layout = layout_from_config(cfg, f"{repo_id} config.json")
    except UnsupportedArchitecture as e:
        layout, warnings = None, [str(e)]
    if layout is not None:
        # Quantized repos pack several weights per stored element: their metadata undercounts.
        params, params_from = layout.params, "config.json"
        if counted and counted != params and not cfg.get("quantization_config"):
            warnings.append(f"{repo_id}: safetensors metadata has {counted:,} parameters, config implies {params:,}")
    elif counted:
        params, params_from = counted, "safetensors metadata (Hub)"
        if cfg.get("quantization_config"):
            warnings.append(f"{repo_id}: a quantized checkpoint: the stored count ({counted:,}) is of packed tensors")
    else:
        raise KitError(warnings[0] + "; and the Hub has no safetensors metadata to count parameters from")
    active = layout.active_params if layout else params
    return make_info(repo_id, "hub", f"hub:{repo_id}", cfg, layout, params, active, params_from, warnings)


def from_catalog(name: str, entry: dict) -> ModelInfo:
    cfg = entry["config"]
    layout = layout_from_config(cfg, f"catalog entry {name}")
    canonical = next(i for i in entry["ids"] if i.lower() == name.lower())
    return make_info(canonical, "catalog", "kit catalog", cfg, layout, layout.params, layout.active_params,
                     "catalog config.json", [])


def make_info(name, source, location, cfg, layout, params, active, params_from, warnings) -> ModelInfo:
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return ModelInfo(
        name=name,
        source=source,
        location=location,
        config=cfg,
        layout=layout,
        params=params,
        active_params=active,
        params_from=params_from,
        dtype=dtype,
        max_context=max_context(cfg),
        quantization=cfg.get("quantization_config"),
        warnings=warnings,
    )
