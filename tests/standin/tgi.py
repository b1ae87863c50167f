"""Stand-in for TGI's `text-generation-launcher` (the version pinned in tests/engine_flags.yaml).

Real: the flags (and the env vars they fall back to, API_KEY included), the model and its greedy
generation, the router's route table (tests/engine_routes.yaml) with TGI's key rule, and real answers
on the generation, tokenize and info routes. Like the real launcher it logs its arguments, the API key
in clear, so kit's job script must filter the key out of the log.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from standin import flags, httpd, routes
from standin.engine import Engine
from standin.model import Model, fail, resolve


class TGI(Engine):
    name = "tgi"

    def __init__(self, model, model_id: str, max_input: int, max_total: int, key: str | None):
        super().__init__(model, max_total)
        self.model_id, self.max_input, self.key = model_id, max_input, key
        health = lambda body: (200, None)  # noqa: E731
        self.handlers = {
            ("GET", "/health"): health, ("GET", "/ping"): health, ("GET", "/"): health,
            ("GET", "/info"): self.info,
            ("GET", "/metrics"): lambda body: (200, f"tgi_request_count {self.requests}\n"),
            ("GET", "/v1/models"): lambda body: (200, {"object": "list", "data": [
                {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}]}),
            ("POST", "/"): lambda body: (200, [self.generate(body)[1]]),
            ("POST", "/generate"): self.generate,
            ("POST", "/generate_stream"): self.generate_stream,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completion,
            ("POST", "/invocations"): self.invocations,
            ("POST", "/vertex"): lambda body: (200, {"predictions": [
                self.generate(dict(i))[1]["generated_text"] for i in body.get("instances") or []]}),
            ("POST", "/tokenize"): lambda body: (200, self.tokens(body.get("inputs"))),
            ("POST", "/chat_tokenize"): self.chat_tokenize,
        }

    def needs_key(self, method, path):
        """The auth layer wraps the generation routes and their paths' 405 fallback; on a path that
        also has an info route (`/`), only the generation method."""
        route, same_path = routes.find(self.name, method, path)
        protected = route.key if route else bool(same_path) and all(r.key for r in same_path)
        return bool(self.key) and protected

    def key_ok(self, header):
        # The whole header, compared case-insensitively with "Bearer <key>"; a bare 401 otherwise.
        return header is not None and header.lower() == f"bearer {self.key}".lower()

    def error(self, message):
        return httpd.HTTPError(422, {"error": f"Input validation error: {message}", "error_type": "validation"})

    def check(self, prompt_tokens, max_tokens):
        if prompt_tokens > self.max_input or prompt_tokens + max_tokens > self.max_total:
            raise self.error(f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total}. "
                             f"Given: {prompt_tokens} `inputs` tokens and {max_tokens} `max_new_tokens`")

    def model_name(self, body):
        return self.model_id  # TGI ignores the request's `model`

    def info(self, body):
        return 200, {"model_id": self.model_id, "version": flags.spec("tgi")["version"],
                     "max_input_tokens": self.max_input, "max_total_tokens": self.max_total,
                     "router": "text-generation-router"}

    def prompt(self, body):
        inputs, params = body.get("inputs"), body.get("parameters") or {}
        if not isinstance(inputs, str):
            raise self.error("missing field `inputs`")
        return self.model.encode(inputs), params.get("max_new_tokens") or 100, params

    def generate(self, body):
        ids, max_new, params = self.prompt(body)
        pieces, generated, finish = self.run(ids, max_new)
        out = {"generated_text": "".join(pieces)}
        if params.get("details"):
            out["details"] = {"finish_reason": "eos_token" if finish == "stop" else "length",
                              "generated_tokens": generated}
        return 200, out

    def generate_stream(self, body):
        ids, max_new, _ = self.prompt(body)
        pieces, generated, finish = self.run(ids, max_new)
        pieces = pieces or [""]

        def events():
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                yield {"index": k, "token": {"id": 0, "text": piece, "logprob": 0.0, "special": False},
                       "generated_text": "".join(pieces) if last else None,
                       "details": {"finish_reason": "eos_token" if finish == "stop" else "length",
                                   "generated_tokens": generated} if last else None}

        return 200, events()

    def invocations(self, body):
        """SageMaker: a chat, completions or generate request, told apart by its fields."""
        return self.chat(body) if "messages" in body else self.completion(body) if "prompt" in body \
            else self.generate(body)

    def tokens(self, text):
        if not isinstance(text, str):
            raise self.error("missing field `inputs`")
        enc = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [{"id": i, "text": text[a:b], "start": a, "stop": b}
                for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]

    def chat_tokenize(self, body):
        ids = self.chat_prompt(body)
        text = self.model.tokenizer.decode(ids)
        return 200, {"tokenize_response": self.tokens(text), "templated_text": text}


def main(argv: list[str]) -> None:
    args, positional = flags.parse("tgi", argv, os.environ)
    if positional:
        flags.usage_error("tgi", f"unexpected argument '{positional[0]}'")
    sys.stderr.write(f"Args {args}\n")  # like the launcher's `{:#?}` of its Args: the key in clear
    ports = [flags.number("tgi", args, "--port", 3000), flags.number("tgi", args, "--prometheus-port", 9000)]
    model_id = args.get("--model-id", "bigscience/bloom-560m")
    path, config = resolve(model_id, args.get("--revision"), args.get("--huggingface-hub-cache"))
    max_total = flags.number("tgi", args, "--max-total-tokens", min(config.get("max_position_embeddings") or 4096, 4096))
    max_input = flags.number("tgi", args, "--max-input-tokens", max_total - 1)
    if max_input >= max_total:
        fail('ArgumentValidation("`max_input_tokens` must be < `max_total_tokens`")')
    host = args.get("--hostname", "0.0.0.0")
    try:
        ipaddress.ip_address(host)
    except ValueError:  # the router's fallback, e.g. for a login profile's HOSTNAME
        httpd.log("Invalid hostname, defaulting to 0.0.0.0")
        host = "0.0.0.0"
    servers = [httpd.bind(host, port) for port in ports]
    httpd.serve(servers, TGI(Model(path), model_id, max_input, max_total, args.get("--api-key")))
