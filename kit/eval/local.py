"""Answers from a model loaded in this process with transformers (and peft for ``--adapter``):
for evaluating a fine-tuned adapter on a GPU node, or a small model on a CPU, without serving it.

The prompt goes through the tokenizer's chat template (the adapter directory's tokenizer when it
has one, as kit's trainer saves it there; else the model's); a tokenizer without a template gets
the messages' text joined by blank lines. Decoding is greedy at temperature 0 (the default) and
samples otherwise. Imports torch, transformers and peft only when constructed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from kit.errors import KitError


def model_dir(path: Path, option: str, marker: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise KitError(f"{option} {path}: no such directory (a local model directory with {marker})")
    if not (path / marker).is_file():
        raise KitError(f"{option} {path}: no {marker} in it")
    return path


def reason(e: Exception) -> str:
    """The telling line of a loading error (torch puts "size mismatch for ..." below a header)."""
    text = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return next((line for line in text if "size mismatch" in line), text[0])


class LocalModel:
    workers = 1  # one generate() at a time: the model uses every core (or the GPU) already

    def __init__(self, model: Path, adapter: Path | None = None, *, max_tokens: int, temperature: float | None):
        model = model_dir(model, "--model", "config.json")
        adapter = model_dir(adapter, "--adapter", "adapter_config.json") if adapter else None
        # Library chatter is not kit's output: peft imports bitsandbytes, which logs a warning on
        # CPUs without its optional kernels; transformers warns about its own deprecations.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            if adapter:
                from peft import PeftModel
        except ImportError as e:
            raise KitError(f"--model needs torch, transformers and, for --adapter, peft ({e.name} is missing): "
                           "pip install 'kit-llm[finetune]'") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.max_tokens, self.temperature = max_tokens, temperature
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer_dir = adapter if adapter and (adapter / "tokenizer_config.json").is_file() else model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch.bfloat16 if self.device == "cuda" else torch.float32)
        except (OSError, ValueError) as e:
            raise KitError(f"--model {model}: cannot load it with transformers: {str(e).splitlines()[0]}") from None
        if adapter:
            try:
                self.model = PeftModel.from_pretrained(self.model, adapter)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise KitError(f"--adapter {adapter}: cannot load it onto {model}: {reason(e)}") from None
        self.model.to(self.device).eval()

    def inputs(self, messages: list[dict]):
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)
        return self.tokenizer("\n\n".join(m["content"] for m in messages), return_tensors="pt")

    def answer(self, messages: list[dict]) -> str:
        encoded = self.inputs(messages).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature else {"do_sample": False}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self.torch.inference_mode():
            out = self.model.generate(**encoded, max_new_tokens=self.max_tokens, pad_token_id=pad, **sampling)
        new_tokens = out[0, encoded["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)
