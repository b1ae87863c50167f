"""Exact parameter counts from safetensors headers, without reading any weights.

A .safetensors file starts with an 8-byte little-endian header length and a JSON header
mapping tensor names to dtype and shape (the format's spec). Reading only that header is
what the Hub's ``get_safetensors_metadata`` does remotely.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from kit.errors import KitError

MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise KitError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER:
                raise KitError(f"{path}: not a safetensors file (header size {size} is implausible)")
            header = json.loads(f.read(size))
    except OSError as e:
        raise KitError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KitError(f"{path}: not a safetensors file (header is not JSON)") from None
    header.pop("__metadata__", None)
    return header


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: those its index names, else every *.safetensors except the
    ``consolidated*`` copy that Mistral repos ship beside the HF-format shards."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            raise KitError(f"{index}: not a valid safetensors index (no weight_map)") from None
        return sorted(model_dir / n for n in names)
    files = sorted(model_dir.glob("*.safetensors"))
    hf_files = [f for f in files if not f.name.startswith("consolidated")]
    return hf_files or files


def tensor_shapes(model_dir: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) over the checkpoint's safetensors files."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for file in weight_files(model_dir):
        for name, info in read_header(file).items():
            tensors[name] = (info["dtype"], list(info["shape"]))
    return tensors


def count_parameters(model_dir: Path, tied_embeddings: bool | None = None) -> tuple[int, dict[str, int]] | None:
    """(unique parameter count, count per dtype), or None when there are no safetensors files.

    Some conversions store a tied lm_head a second time (the research notes name falcon-7b);
    when the config says the embeddings are tied, that copy is not counted.
    """
    tensors = tensor_shapes(model_dir)
    if not tensors:
        return None
    if tied_embeddings and "lm_head.weight" in tensors and len(tensors) > 1:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    by_dtype: dict[str, int] = {}
    for dtype, shape in tensors.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + math.prod(shape)
    return sum(by_dtype.values()), by_dtype
