"""LoRA adapters for a serving job: local directories and cached Hub adapters are bound
read-only; other Hub ids go to the engine in the form engines.yaml gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kit.errors import KitError
from kit.models.resolve import HUB_ID


def adapter_rank(path: Path, ref: str) -> int:
    config = path / "adapter_config.json"
    if not config.is_file():
        raise KitError(f"--adapter {ref}: no adapter_config.json (a PEFT LoRA adapter directory)")
    try:
        return int(json.loads(config.read_text()).get("r", 0)) or 16
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise KitError(f"--adapter {ref}: adapter_config.json is not valid") from None


def adapter_specs(refs: list[str], engine: dict, site=None, account: str | None = None,
                  offline: bool = False) -> tuple[list[dict], int | None, list[str]]:
    """Local adapter directories (and Hub adapters found in the shared cache) are bound read-only
    and passed as name=path; other Hub ids are passed for the engine to download, in the form
    engines.yaml gives (TGI takes a bare id: `name=...` means a local path), which needs a job
    that is not offline."""
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


