"""Merging a LoRA adapter into its base model: a plain model directory any engine can serve.

The base is loaded in its own stored dtype (a QLoRA adapter merges into the unquantized base, the
usual practice: the 4-bit copy was only a training device). Written beside OUT and renamed into it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kit.errors import KitError


def adapter_base(adapter_dir: Path) -> str:
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise KitError(f"{adapter_dir}: not an adapter directory (no adapter_config.json)")
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        raise KitError(f"{cfg_path}: not a JSON object") from None
    if not base:
        raise KitError(f"{cfg_path}: names no base_model_name_or_path; give --base MODEL")
    return base


def merge_adapter(adapter_dir: Path, out: Path, base: str | None = None) -> dict:
    adapter_dir, out = Path(adapter_dir), Path(out)
    base = base or adapter_base(adapter_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitError(f"--out {out}: already exists and is not an empty directory")
    try:
        import torch  # noqa: F401
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise KitError(f"kit finetune merge needs torch, transformers and peft ({e.name} is missing): "
                       "pip install 'kit-llm[finetune]'") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", local_files_only=True)
    except (OSError, ValueError) as e:
        raise KitError(f"base model {base}: cannot load it: {str(e).splitlines()[0]}") from None
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as e:
        raise KitError(f"{adapter_dir}: does not fit base model {base}: {str(e).splitlines()[0]}") from None
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_src), local_files_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KitError(f"--out {out}: cannot write the merged model: {e.strerror}") from None
    return {"base": base, "out": str(out)}
