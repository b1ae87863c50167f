"""Stand-in for `vllm serve` (the version pinned in tests/engine_flags.yaml).

Real: the flags (--api-key falls back to VLLM_API_KEY), the start-up checks of the context length
and tensor parallel size, the model and its greedy generation, --uds (a Unix socket instead of host
and port), the API server's route table (tests/engine_routes.yaml) with vLLM's key rule (every path
under /v1, nothing else), real answers on the generation, tokenize and info routes, and the check of
the requested model name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

from standin import flags, httpd, routes
from standin.engine import Engine
from standin.model import Model, fail, resolve


class VLLM(Engine):
    name = "vllm"
    unauthorized = (401, {"error": "Unauthorized"})

    def __init__(self, model, names: list[str], root: str, max_len: int, keys: list[str]):
        super().__init__(model, max_len)
        self.names, self.root = names, root
        self.keys = [hashlib.sha256(k.encode()).digest() for k in keys]
        health = lambda body: (200, None)  # noqa: E731
        metrics = lambda body: (200, f"vllm:num_requests_total {self.requests}\n")  # noqa: E731
        self.handlers = {
            ("GET", "/health"): health, ("GET", "/ping"): health, ("POST", "/ping"): health,
            ("GET", "/version"): lambda body: (200, {"version": flags.spec("vllm")["version"]}),
            ("GET", "/load"): lambda body: (200, {"server_load": 0}),
            ("GET", "/metrics"): metrics, ("ANY", "/metrics"): metrics,
            ("GET", "/v1/models"): lambda body: (200, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "vllm", "root": self.root, "max_model_len": max_len}
                for name in self.names]}),
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completion,
            ("POST", "/invocations"): lambda body: self.chat(body) if "messages" in body else self.completion(body),
            ("POST", "/inference/v1/generate"): self.generate_tokens,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/detokenize"): lambda body: (200, {"prompt": self.model.tokenizer.decode(
                body.get("tokens") or [])}),
            ("POST", "/is_scaling_elastic_ep"): lambda body: (200, {"is_scaling_elastic_ep": False}),
        }

    def needs_key(self, method, path):
        prefixes = tuple(routes.spec(self.name)["key"]["prefixes"])
        return bool(self.keys) and method != "OPTIONS" and path.startswith(prefixes)

    def key_ok(self, header):
        scheme, _, param = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(param.encode()).digest()
        return any([hmac.compare_digest(digest, key) for key in self.keys])

    def tokenize(self, body):
        ids = self.chat_prompt(body) if "messages" in body else self.model.encode(str(body.get("prompt", "")))
        return 200, {"count": len(ids), "max_model_len": self.max_total, "tokens": ids, "token_strs": None}

    def generate_tokens(self, body):
        """POST /inference/v1/generate: token ids in, token ids out."""
        ids = body.get("token_ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise self.error("`token_ids` must be a list of integers")
        max_tokens = (body.get("sampling_params") or {}).get("max_tokens") or self.max_total - len(ids)
        self.check(len(ids), max_tokens)
        self.requests += 1
        new, _, finish = self.model.generate_ids(ids, max_tokens)
        return 200, {"request_id": f"gen-{uuid.uuid4().hex}", "choices": [
            {"index": 0, "logprobs": None, "finish_reason": finish, "token_ids": new}]}

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
    uds = args.get("--uds")  # vLLM: host and port are then ignored
    srv = httpd.bind_unix(uds) if uds else httpd.bind(args.get("--host") or "0.0.0.0", port)
    httpd.serve([srv], VLLM(Model(path), args.get("--served-model-name") or [model_id], model_id, max_len,
                            args.get("--api-key") or []))
