"""Stand-in for text-embeddings-inference's `text-embeddings-router` (the version pinned in
tests/engine_flags.yaml).

Real: the flags (and the env vars they fall back to, API_KEY included), the route table
(tests/engine_routes.yaml) behind TEI's key rule (exactly `Bearer <key>`, else 401 with an empty
body), the HTTP port and the separate Prometheus port, and real embeddings: the model directory loaded
with sentence-transformers on the CPU (TEI's pooling and its maximum input length come from the same
sentence-transformers config), L2-normalised unless a request says `"normalize": false`, with TEI's
batch-size, empty-input and length checks. Like the real router it logs its arguments with the API key
in clear, so kit must keep TEI's log out of sight. KIT_STANDIN_EXIT_DIR/tei appearing makes it exit 1
(a service dying under a running job).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from standin import flags, httpd, routes
from standin.engine import Engine
from standin.httpd import HTTPError


class Embedder:
    def __init__(self, path: str):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(2)
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.max_input = int(self.model.max_seq_length)
        self.lock = threading.Lock()

    def tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def embed(self, texts: list[str], normalize: bool) -> list[list[float]]:
        with self.lock:
            vectors = self.model.encode(texts, normalize_embeddings=normalize, convert_to_numpy=True,
                                        show_progress_bar=False)
        return vectors.astype("float32").tolist()


class TEI(Engine):
    name = "tei"

    def __init__(self, embedder: Embedder, args: dict, key: str | None):
        super().__init__(embedder, 0)
        self.key, self.args = key, args
        self.model_id = args["--model-id"]
        self.served = args.get("--served-model-name") or self.model_id
        self.max_batch = flags.number("tei", args, "--max-client-batch-size", 32)
        self.auto_truncate = args.get("--auto-truncate", True)
        health = lambda body: (200, None)  # noqa: E731
        self.handlers = {
            ("GET", "/health"): health, ("GET", "/"): health, ("GET", "/ping"): health,
            ("GET", "/metrics"): lambda body: (200, f"te_request_count {self.requests}\n"),
            ("GET", "/info"): self.info,
            ("POST", "/embed"): self.embed, ("POST", "/"): self.embed, ("POST", "/invocations"): self.embed,
            ("POST", "/v1/embeddings"): self.openai, ("POST", "/embeddings"): self.openai,
        }

    def needs_key(self, method, path):
        """As in TGI (the same axum layering): a key route, or a path whose every route needs the key."""
        route, same_path = routes.find(self.name, method, path)
        protected = route.key if route else bool(same_path) and all(r.key for r in same_path)
        return bool(self.key) and protected

    def key_ok(self, header):
        return header == f"Bearer {self.key}"  # exact: case-sensitive, unlike TGI

    def error(self, message, kind="validation", status=422):
        return HTTPError(status, {"error": message, "error_type": kind})

    def info(self, body):
        return 200, {"model_id": self.model_id, "model_sha": None, "model_dtype": "float32",
                     "served_model_name": self.served, "model_type": {"embedding": {"pooling": "mean"}},
                     "max_concurrent_requests": 512, "max_input_length": self.model.max_input,
                     "max_batch_tokens": 16384, "max_batch_requests": None, "max_client_batch_size": self.max_batch,
                     "auto_truncate": self.auto_truncate, "tokenization_workers": 1,
                     "version": flags.spec("tei")["version"], "sha": None, "docker_label": None}

    def texts(self, inputs) -> list[str]:
        batch = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(batch, list) or not all(isinstance(t, str) for t in batch):
            raise self.error("`inputs` must be a string or a list of strings")
        if not batch:
            raise self.error("`inputs` cannot be empty", "empty", 400)
        if len(batch) > self.max_batch:
            raise self.error(f"batch size {len(batch)} > maximum allowed batch size {self.max_batch}")
        return batch

    def vectors(self, texts: list[str], truncate, normalize: bool) -> list[list[float]]:
        truncate = self.auto_truncate if truncate is None else truncate
        if not truncate:
            for text in texts:
                n = self.model.tokens(text)
                if n > self.model.max_input:
                    raise self.error(f"`inputs` must have less than {self.model.max_input} tokens. Given: {n}")
        self.requests += 1
        return self.model.embed(texts, normalize)

    def embed(self, body):
        texts = self.texts(body.get("inputs"))
        return 200, self.vectors(texts, body.get("truncate"), bool(body.get("normalize", True)))

    def openai(self, body):
        texts = self.texts(body.get("input"))
        data = self.vectors(texts, None, True)
        return 200, {"object": "list", "model": self.served, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                     "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(data)]}


def main(argv: list[str]) -> None:
    args, positional = flags.parse("tei", argv, os.environ)
    if positional:
        flags.usage_error("tei", f"unexpected argument '{positional[0]}'")
    if "--model-id" not in args:
        flags.usage_error("tei", "the following required arguments were not provided: --model-id <MODEL_ID>")
    httpd.log(f"Args {json.dumps(args)}")  # like the router's `{args:?}`: the key in clear
    path = args["--model-id"]
    if not os.path.isfile(os.path.join(path, "config.json")):
        httpd.log(f"Error: Could not download model artifacts: {path} is not a local model directory "
                  f"and the stand-in never downloads")
        sys.exit(1)
    ports = [flags.number("tei", args, "--port", 3000), flags.number("tei", args, "--prometheus-port", 9000)]
    host = args.get("--hostname", "0.0.0.0")
    servers = [httpd.bind(host, port) for port in ports]
    httpd.exit_when_asked("tei")
    engine = TEI(Embedder(path), args, args.get("--api-key"))
    httpd.log(f"Maximum number of tokens per request: {engine.model.max_input}")
    httpd.log("Ready")
    httpd.serve(servers, engine)
