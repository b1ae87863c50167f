"""Stand-in for `vllm serve` (the version pinned in tests/engine_flags.yaml).

Real: the flags (--api-key falls back to VLLM_API_KEY), the start-up checks of the context length
and tensor parallel size, the model and its greedy generation, the routes kit and InferenceClient
use, vLLM's key rule (every /v1 path) and its check of the requested model name.
"""

from __future__ import annotations

import hmac
import os

from standin import flags, httpd
from standin.model import Model, fail, resolve


class VLLM(httpd.Engine):
    unauthorized = (401, {"error": "Unauthorized"})

    def __init__(self, model, names: list[str], root: str, max_len: int, keys: list[str]):
        super().__init__(model, max_len)
        self.names, self.root, self.keys = names, root, keys
        self.routes = {
            ("GET", "/health"): lambda body: (200, None),
            ("GET", "/version"): lambda body: (200, {"version": flags.spec("vllm")["version"]}),
            ("GET", "/metrics"): lambda body: (200, f"vllm:num_requests_total {self.requests}\n"),
            ("GET", "/v1/models"): lambda body: (200, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "vllm", "root": self.root, "max_model_len": max_len}
                for name in self.names]}),
            ("POST", "/v1/chat/completions"): self.chat,
        }

    def needs_key(self, method, path):
        return bool(self.keys) and path.startswith("/v1")

    def key_ok(self, header):
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer "):].encode()
        return any(hmac.compare_digest(token, key.encode()) for key in self.keys)

    def error(self, message, status=400, kind="BadRequestError"):
        return httpd.HTTPError(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def check(self, prompt_tokens, max_tokens):
        if prompt_tokens + max_tokens > self.max_total:
            raise self.error(f"This model's maximum context length is {self.max_total} tokens. However, you "
                             f"requested {prompt_tokens + max_tokens} tokens.")

    def model_name(self, body):
        name = body.get("model") or self.names[0]
        if name not in self.names:
            raise self.error(f"The model `{name}` does not exist.", 404, "NotFoundError")
        return name


def main(argv: list[str]) -> None:
    args, positional = flags.parse("vllm", argv, os.environ)
    if len(positional) > 1:
        flags.usage_error("vllm", f"unrecognized arguments: {' '.join(positional[1:])}")
    port = flags.number("vllm", args, "--port", 8000)
    model_id = positional[0] if positional else args.get("--model", "Qwen/Qwen3-0.6B")
    path, config = resolve(model_id, args.get("--revision"), args.get("--download-dir"))
    derived = config.get("max_position_embeddings") or 2048
    max_len = flags.number("vllm", args, "--max-model-len", derived)
    if max_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
        fail(f"User-specified max_model_len ({max_len}) is greater than the derived max_model_len "
             f"({derived}); set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 to allow it")
    tp = flags.number("vllm", args, "--tensor-parallel-size", 1)
    heads = config.get("num_attention_heads") or 1
    if tp < 1 or heads % tp:
        fail(f"Total number of attention heads ({heads}) must be divisible by tensor parallel size ({tp}).")
    srv = httpd.bind(args.get("--host") or "0.0.0.0", port)
    httpd.serve([srv], VLLM(Model(path), args.get("--served-model-name") or [model_id], model_id, max_len,
                            args.get("--api-key") or []))
