"""The model behind both engine stand-ins: found like the engines find it (a local directory, else
the local Hugging Face cache; never downloaded), loaded with transformers on CPU, greedy."""

from __future__ import annotations

import json
import os
import sys
import threading

MAX_NEW_TOKENS = 64  # the stand-in never generates more (keeps the tests fast)


def fail(message: str, code: int = 1):
    sys.stderr.write(f"Error: {message}\n")
    sys.exit(code)


def resolve(model_id: str, revision: str | None = None, cache_dir: str | None = None) -> tuple[str, dict]:
    """(local directory, its config.json), or exit 1 like an engine that cannot find the model."""
    path = model_id
    if not os.path.isdir(path) and not path.startswith(("/", ".")):
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is "not found" here
            fail(f"{model_id} is not in the local cache: {type(exc).__name__}: {exc}")
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        fail(f"cannot load {model_id}: config.json: {exc}")
    burst = config.get("kit_standin_crash_lines")
    if burst:  # a test's model that crashes at load with a long traceback, like a real engine
        for i in range(int(burst)):
            sys.stderr.write(f"Traceback line {i} of {burst}\n")
        fail(f"crashed loading {model_id} after {burst} lines (kit_standin_crash_lines)")
    return path, config


class Model:
    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(2)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The chat template's prompt; a template error (an unknown role) raises ValueError."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - jinja's errors are the client's fault
            raise ValueError(f"chat template: {exc}") from None
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_ids(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], int, str]:
        """Greedy: (new token ids up to the end-of-sequence; tokens generated; "stop" or "length")."""
        eos = self.tokenizer.eos_token_id
        with self.lock, self.torch.inference_mode():
            prompt = self.torch.tensor([ids])
            out = self.model.generate(prompt, attention_mask=self.torch.ones_like(prompt), do_sample=False,
                                      max_new_tokens=max(1, min(max_new_tokens, MAX_NEW_TOKENS)),
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        new = out[0][len(ids):].tolist()
        stopped = eos in new
        return (new[:new.index(eos)] if stopped else new), len(new), "stop" if stopped else "length"

    def generate(self, ids: list[int], max_new_tokens: int) -> tuple[list[str], int, str]:
        """Greedy: (text pieces, one per new token; tokens generated; "stop" or "length")."""
        text_ids, generated, finish = self.generate_ids(ids, max_new_tokens)
        pieces, shown = [], ""
        for k in range(1, len(text_ids) + 1):
            text = self.tokenizer.decode(text_ids[:k], skip_special_tokens=True)
            pieces.append(text[len(shown):])
            shown = text
        return pieces, generated, finish
