"""Stand-in for the LLM serving engines: TGI's `text-generation-launcher` 3.3.7 and `vllm serve` 0.19.

    python tests/standin/engine.py --engine tgi  --model-id DIR --port N [TGI flags...]
    python tests/standin/engine.py --engine vllm DIR --port N [vLLM flags...]

(the wrappers tests/standin/bin/text-generation-launcher and tests/standin/bin/vllm call this).

What is real: the model (loaded with transformers on CPU, never downloaded), the tokenizer, its chat
template and greedy generation, the HTTP routes and payload shapes that kit and huggingface_hub's
InferenceClient use, and the engines' behaviour at the edges: flag parsing (unknown flag -> exit 2;
flags also read from the env vars the engine reads), start-up failures (missing model, taken port
-> exit 1), readiness (nothing answers until the model is loaded; then /health is 200), API-key
rules per engine, request validation (context length), SIGTERM/SIGINT -> clean exit 0.

What is not: no GPU, no batching (one generation at a time), sampling parameters are ignored
(always greedy), LoRA adapters are checked at start-up but not applied, no tool calling.
Differences from the real engines that matter are listed in `STANDIN_NOTES` below.

Logs go to stderr, one line per request; the API key is never written anywhere.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TGI_VERSION = "3.3.7"
TGI_SHA = "d0b6e1a0c58d3f7e5f6c6f4b1f3e2a9c8b7d6e5f"  # made up; real /info carries the build sha
VLLM_VERSION = "0.19.1"
DEFAULT_MAX_NEW_TOKENS = 16
MAX_NEW_TOKENS_CAP = 64  # the stand-in never generates more than this (keeps tests fast)

STANDIN_NOTES = """\
- Both engines: generation is greedy and capped at 64 new tokens; sampling parameters are ignored.
- TGI: the real launcher logs its whole Args struct at start-up, api_key included (upstream
  `tracing::info!("{:#?}", args)`); the stand-in prints that line unredacted too, so kit's job
  script must filter the key out of the log. Every other line is redacted here.
- Logs go to stderr here; the real engines log mostly to stdout.
"""


# --- logging (never the key) ---------------------------------------------------------------------

class Log:
    def __init__(self, engine: str, json_output: bool = False):
        self.engine = engine
        self.json_output = json_output
        self.secrets: list[str] = []
        self.lock = threading.Lock()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "[REDACTED]")
        return text

    def raw(self, text: str) -> None:
        with self.lock:
            try:
                sys.stderr.write(self.redact(text) + ("" if text.endswith("\n") else "\n"))
                sys.stderr.flush()
            except (BrokenPipeError, ValueError):
                pass

    def tgi(self, level: str, target: str, message: str) -> None:
        now = _dt.datetime.now(_dt.timezone.utc)
        if self.json_output:
            self.raw(json.dumps({"timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "level": level,
                                 "fields": {"message": self.redact(message)}, "target": target}))
        else:
            self.raw(f"{now.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {level:>5} {target}: {message}")

    def vllm(self, level: str, where: str, message: str) -> None:
        now = _dt.datetime.now()
        self.raw(f"{level} {now.strftime('%m-%d %H:%M:%S')} [{where}] {message}")

    def info(self, message: str) -> None:
        if self.engine == "tgi":
            self.tgi("INFO", "text_generation_launcher", message)
        else:
            self.vllm("INFO", "api_server.py", message)

    def error(self, message: str) -> None:
        if self.engine == "tgi":
            self.tgi("ERROR", "text_generation_launcher", message)
        else:
            self.vllm("ERROR", "api_server.py", message)


def die(log: Log, code: int, *lines: str) -> None:
    for line in lines:
        log.raw(line)
    sys.stdout.flush()
    os._exit(code)


# --- TGI flags: a small clap look-alike ------------------------------------------------------------

class ClapError(Exception):
    pass


def _clap_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on", "y"):
        return True
    if v in ("false", "0", "no", "off", "n", ""):
        return False
    raise ValueError(f"invalid value '{value}'")


def _uint(value: str) -> int:
    if not re.fullmatch(r"\+?\d+", value.strip()):
        raise ValueError("invalid digit found in string")
    return int(value)


def _port(value: str) -> int:
    n = _uint(value)
    if n > 65535:
        raise ValueError("number too large to fit in target type")
    return n


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError("invalid float literal") from None


# name, kind, value name, default; kind: str|uint|port|float|bool|choice:<a,b,...>
TGI_FLAGS: list[tuple[str, str, str | None]] = [
    ("model-id", "str", "bigscience/bloom-560m"),
    ("revision", "str", None),
    ("sharded", "choice:true,false", None),
    ("num-shard", "uint", None),
    ("quantize", "choice:awq,compressed-tensors,eetq,exl2,gptq,marlin,bitsandbytes,bitsandbytes-nf4,"
                 "bitsandbytes-fp4,fp8", None),
    ("dtype", "choice:float16,bfloat16", None),
    ("kv-cache-dtype", "choice:fp8_e4m3fn,fp8_e5m2", None),
    ("trust-remote-code", "bool", None),
    ("max-concurrent-requests", "uint", "128"),
    ("max-input-tokens", "uint", None),
    ("max-input-length", "uint", None),
    ("max-total-tokens", "uint", None),
    ("max-batch-prefill-tokens", "uint", None),
    ("max-batch-total-tokens", "uint", None),
    ("max-client-batch-size", "uint", "4"),
    ("cuda-graphs", "str", None),
    ("hostname", "str", "0.0.0.0"),
    ("port", "port", "3000"),
    ("prometheus-port", "port", "9000"),
    ("shard-uds-path", "str", "/tmp/text-generation-server"),
    ("master-addr", "str", "localhost"),
    ("master-port", "port", "29500"),
    ("huggingface-hub-cache", "str", None),
    ("weights-cache-override", "str", None),
    ("disable-custom-kernels", "bool", None),
    ("cuda-memory-fraction", "float", "1.0"),
    ("json-output", "bool", None),
    ("api-key", "str", None),
    ("tokenizer-config-path", "str", None),
    ("lora-adapters", "str", None),
    ("usage-stats", "choice:on,off,no-stack", "on"),
    ("payload-limit", "uint", "2000000"),
    ("graceful-termination-timeout", "uint", "90"),
]
TGI_USAGE = "Usage: text-generation-launcher [OPTIONS]"


def _tgi_convert(flag: str, kind: str, raw: str):
    shown = f"--{flag} <{flag.upper().replace('-', '_')}>"
    try:
        if kind == "str":
            return raw
        if kind == "uint":
            return _uint(raw)
        if kind == "port":
            return _port(raw)
        if kind == "float":
            return _float(raw)
        if kind == "bool":
            return _clap_bool(raw)
        if kind.startswith("choice:"):
            choices = kind.split(":", 1)[1].split(",")
            if raw not in choices:
                raise ClapError(f"error: invalid value '{raw}' for '{shown}'\n"
                                f"  [possible values: {', '.join(choices)}]\n\n"
                                "For more information, try '--help'.")
            return raw
    except ValueError as exc:
        raise ClapError(f"error: invalid value '{raw}' for '{shown}': {exc}\n\n"
                        "For more information, try '--help'.") from None
    raise AssertionError(kind)


def parse_tgi(argv: list[str], environ) -> dict:
    spec = {name: (kind, default) for name, kind, default in TGI_FLAGS}
    given: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-V", "--version"):
            print(f"text-generation-launcher {TGI_VERSION}")
            sys.exit(0)
        if arg in ("-h", "--help"):
            print("Text Generation Launcher (kit stand-in)\n\n" + TGI_USAGE + "\n\nOptions:")
            for name, kind, default in TGI_FLAGS:
                env = name.upper().replace("-", "_")
                print(f"      --{name}{'' if kind == 'bool' else ' <' + env + '>'}  [env: {env}=]"
                      + (f" [default: {default}]" if default is not None else ""))
            sys.exit(0)
        if not arg.startswith("--") or arg == "--":
            raise ClapError(f"error: unexpected argument '{arg}' found\n\n{TGI_USAGE}\n\n"
                            "For more information, try '--help'.")
        name, eq, inline = arg[2:].partition("=")
        if name not in spec:
            raise ClapError(f"error: unexpected argument '--{name}' found\n\n"
                            f"  tip: to pass '--{name}' as a value, use '-- --{name}'\n\n"
                            f"{TGI_USAGE}\n\nFor more information, try '--help'.")
        kind, _ = spec[name]
        shown = f"--{name}" if kind == "bool" else f"--{name} <{name.upper().replace('-', '_')}>"
        if name in given:
            raise ClapError(f"error: the argument '{shown}' cannot be used multiple times\n\n"
                            f"{TGI_USAGE}\n\nFor more information, try '--help'.")
        if kind == "bool":
            if eq:
                raise ClapError(f"error: unexpected value '{inline}' for '{shown}' found; no more were "
                                f"expected\n\n{TGI_USAGE}\n\nFor more information, try '--help'.")
            given[name] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                raise ClapError(f"error: a value is required for '{shown}' but none was supplied\n\n"
                                "For more information, try '--help'.")
            value = argv[i + 1]
            i += 2
        given[name] = value
    args = {}
    for name, kind, default in TGI_FLAGS:
        key = name.replace("-", "_")
        env = name.upper().replace("-", "_")
        if name in given:
            raw = given[name]
            args[key] = True if raw is True else _tgi_convert(name, kind, raw)
        elif env in environ and (kind != "bool" or environ[env] != ""):
            args[key] = _tgi_convert(name, kind, environ[env])
        elif kind == "bool":
            args[key] = False
        elif default is not None:
            args[key] = _tgi_convert(name, kind, default)
        else:
            args[key] = None
    return args


# --- vLLM flags: argparse, like the real CLI --------------------------------------------------------

def parse_human_int(value: str) -> int:
    """vLLM's --max-model-len: 1k = 1000, 1K = 1024, -1 / auto = largest that fits."""
    v = value.strip()
    if v.lower() == "auto" or v == "-1":
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", v)
    if not m:
        raise ValueError(f"invalid value: {value!r}")
    num, suffix = float(m.group(1)), m.group(2)
    mult = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3,
            "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[suffix]
    return int(num * mult)


def make_vllm_parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def parse_args(self, args=None, namespace=None):
            # vLLM's FlexibleArgumentParser: `--max_model_len` == `--max-model-len`.
            fixed = []
            for a in args:
                if a.startswith("--") and len(a) > 2:
                    key, eq, val = a.partition("=")
                    a = key.replace("_", "-") + eq + val
                fixed.append(a)
            return super().parse_args(fixed, namespace)

    def human_int(value):
        try:
            return parse_human_int(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p = Parser(prog="vllm serve", usage="vllm serve [model_tag] [options]", allow_abbrev=False,
               description="Launch a local OpenAI-compatible API server (kit stand-in).")
    p.add_argument("model_tag", nargs="?", default=None)
    p.add_argument("--model", default="Qwen/Qwen3-0.6B")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uds", default=None)
    p.add_argument("--api-key", nargs="+", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--max-model-len", type=human_int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--kv-cache-memory-bytes", type=human_int, default=None)
    p.add_argument("--quantization", "-q", default=None, choices=[
        "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
        "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "compressed-tensors",
        "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "bitsandbytes",
        "gguf"])
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--kv-cache-dtype", default="auto",
                   choices=["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc"])
    p.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--lora-modules", nargs="+", default=None)
    p.add_argument("--max-lora-rank", type=int, default=16,
                   choices=[1, 8, 16, 32, 64, 128, 256, 320, 512])
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-cpu-loras", type=int, default=None)
    p.add_argument("--download-dir", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--disable-log-stats", action="store_true")
    p.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=human_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--distributed-executor-backend", default=None,
                   choices=["ray", "mp", "uni", "external_launcher"])
    p.add_argument("--disable-custom-all-reduce", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--generation-config", default="auto")
    p.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    p.add_argument("--disable-uvicorn-access-log", action=argparse.BooleanOptionalAction, default=False)
    return p


# --- model resolution (fast, before the heavy imports) ----------------------------------------------

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def resolve_model(model: str, revision: str | None, cache_dir: str | None):
    """Local directory for `model`, or (None, error message). Never downloads."""
    if os.path.isdir(model) and revision is None:
        return model, None
    if os.path.exists(model) and not os.path.isdir(model):
        return None, f"{model} is not a directory"
    if not HUB_ID.match(model):
        return None, (f"Repo id must be in the form 'repo_name' or 'namespace/repo_name': '{model}'. "
                      "Use `repo_type` argument if needed.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(model, revision=revision, cache_dir=cache_dir, local_files_only=True)
        return path, None
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True", "yes", "ON", "on"):
            return None, (f"{model} is not in the local cache ({cache_dir or 'default HF cache'}) and the kit "
                          "stand-in never downloads (the real engine would try the Hub here)")
        return None, (f"Cannot find the requested files in the disk cache and outgoing traffic has been "
                      f"disabled. To enable hf.co look-ups and downloads online, set 'HF_HUB_OFFLINE=0' "
                      f"as environment variable. (model: {model})")
    except Exception as exc:  # noqa: BLE001 - report it like the engine would
        return None, f"{type(exc).__name__}: {exc}"


def container_path(path: str) -> str:
    """The path as the caller inside the "container" named it (the runtime stand-in rewrote it)."""
    try:
        pairs = json.loads(os.environ.get("KIT_STANDIN_BINDS") or "[]")
    except ValueError:
        return path
    for dst, src in sorted(pairs, key=lambda p: len(p[1]), reverse=True):
        src = src.rstrip("/")
        if path == src or path.startswith(src + "/"):
            return dst.rstrip("/") + path[len(src):]
    return path


def read_config(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def visible_gpu_count() -> int | None:
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        val = os.environ.get(var)
        if val is None:
            continue
        val = val.strip()
        if val in ("", "void", "none", "NoDevFiles"):
            return 0
        if val == "all":
            return None
        return len([x for x in val.split(",") if x.strip()])
    return None


def check_adapter_dir(path: str) -> str | None:
    if not os.path.isdir(path):
        return f"adapter path {path} does not exist"
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        return f"No adapter found for {path} (adapter_config.json is missing)"
    return None


# --- the loaded model ---------------------------------------------------------------------------------

class Model:
    def __init__(self, path: str, trust_remote_code: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                          trust_remote_code=trust_remote_code)
        self.model.eval()
        self.lock = threading.Lock()
        tok = self.tokenizer
        self.eos_ids = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), tok.eos_token_id):
            if isinstance(value, int):
                self.eos_ids.add(value)
            elif isinstance(value, (list, tuple)):
                self.eos_ids.update(v for v in value if isinstance(v, int))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids), 0)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, input_ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """Greedy; returns (new token ids without the final EOS, stopped on EOS)."""
        torch = self.torch
        n = max(0, min(max_new_tokens, MAX_NEW_TOKENS_CAP))
        if n == 0:
            return [], False
        with self.lock, torch.inference_mode():
            ids = torch.tensor([input_ids], dtype=torch.long)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                      do_sample=False, pad_token_id=self.pad_id,
                                      eos_token_id=sorted(self.eos_ids) or None)
        new = out[0][len(input_ids):].tolist()
        stopped = False
        for k, t in enumerate(new):
            if t in self.eos_ids:
                new, stopped = new[:k], True
                break
        return new, stopped

    def pieces(self, ids: list[int]) -> list[tuple[int, str]]:
        """(token id, text piece) per token; the pieces join to decode(ids)."""
        out, emitted = [], ""
        for k in range(1, len(ids) + 1):
            cur = self.decode(ids[:k])
            if k < len(ids) and (cur.endswith("\ufffd") or not cur.startswith(emitted)):
                out.append((ids[k - 1], ""))
                continue
            if cur.startswith(emitted):
                out.append((ids[k - 1], cur[len(emitted):]))
                emitted = cur
            else:
                out.append((ids[k - 1], ""))
        final = self.decode(ids)
        if final != emitted and out:
            # Should not happen; keep the invariant (pieces join to the final text).
            tid, _ = out[-1]
            out[-1] = (tid, final[len(emitted):] if final.startswith(emitted) else final)
        return out


class Completion:
    """One finished generation, with stop sequences applied."""

    def __init__(self, model: Model, prompt_ids: list[int], max_new_tokens: int, stop: list[str],
                 include_stop: bool):
        self.prompt_tokens = len(prompt_ids)
        ids, eos = model.generate(prompt_ids, max_new_tokens)
        pieces = model.pieces(ids)
        text = "".join(p for _, p in pieces)
        self.finish = "eos_token" if eos else "length"
        cut = None
        for s in stop or []:
            if s:
                pos = text.find(s)
                if pos >= 0 and (cut is None or pos < cut[0]):
                    cut = (pos, s)
        if cut is not None:
            end = cut[0] + (len(cut[1]) if include_stop else 0)
            kept, acc = [], 0
            for tid, piece in pieces:
                if acc >= end:
                    break
                piece = piece[: end - acc]
                kept.append((tid, piece))
                acc += len(piece)
            pieces = kept
            text = text[:end]
            self.finish = "stop_sequence"
        self.pieces = pieces
        self.text = text
        self.completion_tokens = len(pieces) + (1 if eos and cut is None else 0)

    @property
    def openai_finish(self) -> str:
        return "length" if self.finish == "length" else "stop"


# --- HTTP ---------------------------------------------------------------------------------------------

class HTTPError(Exception):
    def __init__(self, status: int, body=None, content_type="application/json"):
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def message_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise ValueError("only text content parts are supported by this model")
        return "".join(parts)
    raise ValueError("message content must be a string or a list of content parts")


class Engine:
    """Routes, auth and payloads for one engine flavour."""

    def __init__(self, kind: str, log: Log, model: Model, *, model_id: str, served_names: list[str],
                 api_keys: list[str], max_input: int, max_total: int, max_concurrent: int,
                 loras: dict[str, str], model_root: str):
        self.kind = kind
        self.log = log
        self.model = model
        self.model_id = model_id
        self.served_names = served_names
        self.api_keys = [k for k in api_keys if k]
        self.max_input = max_input
        self.max_total = max_total
        self.loras = loras
        self.model_root = model_root
        self.created = int(time.time())
        self.max_concurrent = max_concurrent
        self.busy = threading.BoundedSemaphore(max_concurrent) if kind == "tgi" else None
        self.requests = 0
        self.count_lock = threading.Lock()

    # auth ------------------------------------------------------------------------------------------
    TGI_PROTECTED = {"/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions",
                     "/vertex", "/invocations", "/tokenize"}

    def needs_auth(self, method: str, path: str) -> bool:
        if not self.api_keys or method == "OPTIONS":
            return False
        if self.kind == "tgi":
            return method == "POST" and path in self.TGI_PROTECTED
        return path.startswith(("/v1", "/v2", "/inference"))

    def authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        if self.kind == "tgi":
            # TGI compares the whole header value case-insensitively with "Bearer <key>".
            return header.lower() == ("Bearer " + self.api_keys[0]).lower()
        if not header.startswith("Bearer "):
            return False
        import hmac
        token = header[len("Bearer "):]
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in self.api_keys)

    # errors ----------------------------------------------------------------------------------------
    def error(self, status: int, message: str, *, error_type: str | None = None, param=None) -> HTTPError:
        if self.kind == "tgi":
            return HTTPError(status, {"error": message, "error_type": error_type or "validation"})
        names = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
        return HTTPError(status, {"error": {"message": message, "type": error_type or names.get(status, "Error"),
                                            "param": param, "code": status}})

    # routing ---------------------------------------------------------------------------------------
    def routes(self):
        if self.kind == "tgi":
            return {
                ("GET", "/"): self.health, ("GET", "/health"): self.health, ("GET", "/ping"): self.health,
                ("GET", "/info"): self.tgi_info, ("GET", "/metrics"): self.metrics,
                ("GET", "/v1/models"): self.models,
                ("POST", "/"): self.tgi_compat, ("POST", "/generate"): self.tgi_generate,
                ("POST", "/generate_stream"): self.tgi_generate_stream,
                ("POST", "/v1/chat/completions"): self.chat_completions,
                ("POST", "/v1/completions"): self.completions,
            }
        return {
            ("GET", "/health"): self.health, ("GET", "/ping"): self.health, ("POST", "/ping"): self.health,
            ("GET", "/version"): lambda req: (200, {"version": VLLM_VERSION}),
            ("GET", "/load"): lambda req: (200, {"server_load": 0}),
            ("GET", "/metrics"): self.metrics, ("GET", "/v1/models"): self.models,
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
        }

    def not_found(self, method: str, path: str, known_paths: set[str]) -> HTTPError:
        if path in known_paths:
            if self.kind == "tgi":
                return HTTPError(405, None)
            return HTTPError(405, {"detail": "Method Not Allowed"})
        if self.kind == "tgi":
            return HTTPError(404, None)
        return HTTPError(404, {"detail": "Not Found"})

    # simple routes ---------------------------------------------------------------------------------
    def health(self, req):
        return 200, None

    def metrics(self, req):
        if self.kind == "tgi":
            body = (f"# TYPE tgi_request_count counter\ntgi_request_count {self.requests}\n"
                    "# TYPE tgi_queue_size gauge\ntgi_queue_size 0\n")
        else:
            name = self.served_names[0]
            body = (f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="{name}"}} 0\n'
                    f'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name="{name}"}} 0.0\n')
        return 200, (body, "text/plain; version=0.0.4; charset=utf-8")

    def tgi_info(self, req):
        return 200, {
            "model_id": self.model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent,
            "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": self.max_input,
            "max_total_tokens": self.max_total, "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": TGI_VERSION, "sha": TGI_SHA,
            "docker_label": f"sha-{TGI_SHA[:7]}",
        }

    def models(self, req):
        if self.kind == "tgi":
            return 200, {"object": "list", "data": [
                {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}]}
        perm = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self.created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False}
        data = [{"id": name, "object": "model", "created": self.created, "owned_by": "vllm",
                 "root": self.model_root, "parent": None, "max_model_len": self.max_total,
                 "permission": [perm]} for name in self.served_names]
        data += [{"id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": path,
                  "parent": self.served_names[0], "max_model_len": None, "permission": [perm]}
                 for name, path in self.loras.items()]
        return 200, {"object": "list", "data": data}

    # generation helpers ----------------------------------------------------------------------------
    def _count(self):
        with self.count_lock:
            self.requests += 1

    def _acquire(self):
        if self.busy is not None and not self.busy.acquire(blocking=False):
            raise self.error(429, "Model is overloaded", error_type="overloaded")

    def _release(self):
        if self.busy is not None:
            self.busy.release()

    def _check_model_name(self, body: dict) -> str:
        """vLLM: the request's `model` must be a served name or a LoRA name (404 otherwise)."""
        name = body.get("model")
        if self.kind == "tgi":
            return self.model_id
        if not name:
            return self.served_names[0]
        if name in self.served_names or name in self.loras:
            return name
        raise self.error(404, f"The model `{name}` does not exist.", param="model")

    def _max_tokens(self, value, prompt_tokens: int, field: str) -> int:
        if value is None:
            return DEFAULT_MAX_NEW_TOKENS
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            if self.kind == "tgi":
                raise self.error(422, f"Input validation error: `{field}` must be a positive integer")
            raise self.error(400, f"{field} must be at least 1, got {value}.", param=field)
        if self.kind == "tgi":
            if value == 0:
                raise self.error(422, "Input validation error: `max_new_tokens` must be strictly positive")
            if prompt_tokens > self.max_input:
                raise self.error(422, f"Input validation error: `inputs` must have less than {self.max_input} "
                                      f"tokens. Given: {prompt_tokens}")
            if prompt_tokens + value > self.max_total:
                raise self.error(422, f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                                      f"{self.max_total}. Given: {prompt_tokens} `inputs` tokens and {value} "
                                      "`max_new_tokens`")
        else:
            if prompt_tokens + value > self.max_total:
                raise self.error(400, f"This model's maximum context length is {self.max_total} tokens. However, "
                                      f"you requested {prompt_tokens + value} tokens ({prompt_tokens} in the "
                                      f"messages, {value} in the completion). Please reduce the length of the "
                                      "messages or completion.")
        return value

    def _prompt_too_long(self, prompt_tokens: int):
        if self.kind == "tgi" and prompt_tokens > self.max_input:
            raise self.error(422, f"Input validation error: `inputs` must have less than {self.max_input} tokens. "
                                  f"Given: {prompt_tokens}")
        if self.kind == "vllm" and prompt_tokens >= self.max_total:
            raise self.error(400, f"This model's maximum context length is {self.max_total} tokens. However, "
                                  f"your request has {prompt_tokens} input tokens. Please reduce the length of "
                                  "the input messages.")

    @staticmethod
    def _stop_list(value) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise ValueError("stop must be a string or a list of strings")

    def _fingerprint(self):
        return f"{TGI_VERSION}-sha-{TGI_SHA[:7]}" if self.kind == "tgi" else None

    # OpenAI chat -----------------------------------------------------------------------------------
    def chat_completions(self, req):
        body = req.json_body()
        name = self._check_model_name(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise self.error(422 if self.kind == "tgi" else 400, "messages must be a non-empty list")
        try:
            msgs = [{"role": str(m.get("role")), "content": message_text(m.get("content"))} for m in messages]
            stop = self._stop_list(body.get("stop"))
        except (AttributeError, ValueError) as exc:
            raise self.error(422 if self.kind == "tgi" else 400, str(exc)) from None
        try:
            prompt_ids = self.model.chat_ids(msgs)
        except Exception as exc:  # noqa: BLE001 - a template error (raise_exception) is a client error
            if self.kind == "tgi":
                raise self.error(422, f"Template error: {exc}", error_type="template_error") from None
            raise self.error(400, f"{type(exc).__name__}: {exc}") from None
        self._prompt_too_long(len(prompt_ids))
        max_tokens = body.get("max_completion_tokens") if self.kind == "vllm" else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        max_tokens = self._max_tokens(max_tokens, len(prompt_ids), "max_tokens")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._acquire()
        try:
            self._count()
            done = Completion(self.model, prompt_ids, max_tokens, stop, include_stop=False)
        finally:
            self._release()
        created = int(time.time())
        usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                 "total_tokens": done.prompt_tokens + done.completion_tokens}
        if self.kind == "vllm":
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            usage = {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"],
                     "completion_tokens": usage["completion_tokens"], "prompt_tokens_details": None}
        else:
            rid = ""
        if not body.get("stream"):
            if self.kind == "tgi":
                return 200, {"object": "chat.completion", "id": rid, "created": created, "model": name,
                             "system_fingerprint": self._fingerprint(),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                                          "logprobs": None, "finish_reason": done.openai_finish}],
                             "usage": usage}
            return 200, {"id": rid, "object": "chat.completion", "created": created, "model": name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text,
                                                              "refusal": None, "annotations": None,
                                                              "audio": None, "function_call": None,
                                                              "tool_calls": [], "reasoning_content": None},
                                      "logprobs": None, "finish_reason": done.openai_finish,
                                      "stop_reason": None}],
                         "service_tier": None, "system_fingerprint": None, "usage": usage,
                         "prompt_logprobs": None, "kv_transfer_params": None}

        def events():
            def chunk(delta, finish, use=None, choices=True):
                c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name}
                if self.kind == "tgi":
                    c["system_fingerprint"] = self._fingerprint()
                c["choices"] = ([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                                if choices else [])
                if use is not None:
                    c["usage"] = use
                return c

            pieces = done.pieces or [(None, "")]
            if self.kind == "vllm":
                yield chunk({"role": "assistant", "content": ""}, None)
            for k, (_, piece) in enumerate(pieces):
                last = k == len(pieces) - 1
                if self.kind == "tgi":
                    # TGI: usage rides on the last token's chunk (with stream_options.include_usage).
                    yield chunk({"role": "assistant", "content": piece}, done.openai_finish if last else None,
                                use=usage if (last and include_usage) else None)
                else:
                    yield chunk({"content": piece}, done.openai_finish if last else None)
            if include_usage and self.kind == "vllm":
                yield chunk(None, None, use=usage, choices=False)
            yield "[DONE]"

        return 200, events()

    # OpenAI completions ----------------------------------------------------------------------------
    def completions(self, req):
        body = req.json_body()
        name = self._check_model_name(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise self.error(422 if self.kind == "tgi" else 400, "prompt must be a string")
        try:
            stop = self._stop_list(body.get("stop"))
        except ValueError as exc:
            raise self.error(422 if self.kind == "tgi" else 400, str(exc)) from None
        prompt_ids = self.model.encode(prompt)
        if self.kind == "vllm" and self.model.tokenizer.bos_token_id is not None:
            prompt_ids = [self.model.tokenizer.bos_token_id] + prompt_ids
        self._prompt_too_long(len(prompt_ids))
        max_tokens = self._max_tokens(body.get("max_tokens"), len(prompt_ids), "max_tokens")
        self._acquire()
        try:
            self._count()
            done = Completion(self.model, prompt_ids, max_tokens, stop, include_stop=False)
        finally:
            self._release()
        created = int(time.time())
        rid = f"cmpl-{uuid.uuid4().hex}" if self.kind == "vllm" else ""
        usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                 "total_tokens": done.prompt_tokens + done.completion_tokens}
        base = {"id": rid, "object": "text_completion", "created": created, "model": name}
        if self.kind == "tgi":
            base["system_fingerprint"] = self._fingerprint()
        if not body.get("stream"):
            return 200, {**base, "choices": [{"index": 0, "text": done.text, "logprobs": None,
                                              "finish_reason": done.openai_finish}], "usage": usage}

        def events():
            pieces = done.pieces or [(None, "")]
            for k, (_, piece) in enumerate(pieces):
                last = k == len(pieces) - 1
                yield {**base, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                            "finish_reason": done.openai_finish if last else None}]}
            yield "[DONE]"

        return 200, events()

    # TGI native ------------------------------------------------------------------------------------
    def _tgi_run(self, body: dict):
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise self.error(422, "Failed to deserialize the JSON body into the target type: missing field "
                                  "`inputs`")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise self.error(422, "`parameters` must be an object")
        try:
            stop = self._stop_list(params.get("stop"))
        except ValueError as exc:
            raise self.error(422, str(exc)) from None
        if len(stop) > 4:
            raise self.error(422, f"Input validation error: `stop` must have less than 4 stop sequences. "
                                  f"Given: {len(stop)}")
        prompt_ids = self.model.encode(inputs)
        self._prompt_too_long(len(prompt_ids))
        max_new = self._max_tokens(params.get("max_new_tokens"), len(prompt_ids), "max_new_tokens")
        self._acquire()
        try:
            self._count()
            done = Completion(self.model, prompt_ids, max_new, stop, include_stop=True)
        finally:
            self._release()
        text = (inputs + done.text) if params.get("return_full_text") else done.text
        return done, text, params

    def _tgi_details(self, done: Completion) -> dict:
        return {"finish_reason": done.finish, "generated_tokens": done.completion_tokens, "seed": None,
                "prefill": [], "tokens": [{"id": tid, "text": piece, "logprob": 0.0, "special": False}
                                          for tid, piece in done.pieces]}

    def tgi_generate(self, req):
        done, text, params = self._tgi_run(req.json_body())
        out = {"generated_text": text}
        if params.get("details") or params.get("decoder_input_details"):
            out["details"] = self._tgi_details(done)
        return 200, out

    def tgi_generate_stream(self, req):
        done, text, params = self._tgi_run(req.json_body())

        def events():
            pieces = done.pieces or [(self.model.pad_id, "")]
            for k, (tid, piece) in enumerate(pieces):
                last = k == len(pieces) - 1
                yield {"index": k + 1, "token": {"id": tid, "text": piece, "logprob": 0.0, "special": False},
                       "generated_text": text if last else None,
                       "details": ({"finish_reason": done.finish, "generated_tokens": done.completion_tokens,
                                    "seed": None, "input_length": done.prompt_tokens} if last else None),
                       "top_tokens": None}

        return 200, events()

    def tgi_compat(self, req):
        body = req.json_body()
        if body.get("stream"):
            return self.tgi_generate_stream(req)
        status, out = self.tgi_generate(req)
        return status, [out]


def make_handler(engine: Engine):
    routes = engine.routes()
    known_paths = {p for _, p in routes}
    kind = engine.kind
    log = engine.log

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "uvicorn" if kind == "vllm" else "kit-standin-tgi"
        sys_version = ""

        def version_string(self):
            return "uvicorn" if kind == "vllm" else "kit-standin-tgi"

        def log_message(self, fmt, *args):  # silence the stdlib's own access log
            pass

        def json_body(self):
            raw = self._body
            try:
                body = json.loads(raw or b"")
            except ValueError as exc:
                if kind == "tgi":
                    raise HTTPError(400, f"Failed to parse the request body as JSON: {exc}",
                                    "text/plain; charset=utf-8") from None
                raise engine.error(400, f"JSON decode error: {exc}") from None
            if not isinstance(body, dict):
                if kind == "tgi":
                    raise HTTPError(422, "Failed to deserialize the JSON body into the target type",
                                    "text/plain; charset=utf-8")
                raise engine.error(400, "the request body must be a JSON object")
            return body

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                data = b""
                while True:
                    line = self.rfile.readline()
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _send(self, status: int, body, content_type: str = "application/json"):
            if body is None:
                payload = b""
            elif isinstance(body, bytes):
                payload = body
            elif isinstance(body, str):
                payload = body.encode()
            else:
                payload = json.dumps(body).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _send_events(self, events):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write_chunk(data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            for event in events:
                text = event if isinstance(event, str) else json.dumps(event)
                # Both write `data: <payload>` (TGI's axum >= 0.7 adds the space, see TGI #2019).
                write_chunk(f"data: {text}\n\n".encode())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _handle(self):
            start = time.monotonic()
            status = 500
            path = self.path.split("?", 1)[0]
            try:
                self._body = self._read_body()
                if engine.needs_auth(self.command, path) and not engine.authorized(
                        self.headers.get("Authorization")):
                    status = 401
                    if kind == "tgi":
                        self._send(401, None)  # TGI answers a bare 401, no body
                    else:
                        self._send(401, {"error": "Unauthorized"})
                    return
                fn = routes.get((self.command, path))
                if fn is None:
                    raise engine.not_found(self.command, path, known_paths)
                status, out = fn(self)
                if isinstance(out, tuple):
                    self._send(status, out[0], out[1])
                elif out is not None and hasattr(out, "__next__"):
                    self._send_events(out)
                else:
                    self._send(status, out)
            except HTTPError as exc:
                status = exc.status
                self._send(exc.status, exc.body, exc.content_type)
            except (BrokenPipeError, ConnectionResetError):
                status = 499
            except Exception as exc:  # noqa: BLE001 - a stand-in bug must show, not hang the client
                status = 500
                log.raw(f"stand-in internal error on {self.command} {path}: {type(exc).__name__}: {exc}")
                try:
                    self._send(500, {"error": f"{type(exc).__name__}: {exc}", "error_type": "internal"}
                               if kind == "tgi" else {"error": {"message": str(exc), "type": "InternalServerError",
                                                                "param": None, "code": 500}})
                except OSError:
                    pass
            finally:
                ms = (time.monotonic() - start) * 1000
                client = f"{self.client_address[0]}:{self.client_address[1]}"
                if kind == "tgi":
                    log.tgi("INFO", "text_generation_router::server",
                            f"{self.command} {path} {status} {ms:.1f}ms client={client}")
                else:
                    from http import HTTPStatus
                    try:
                        phrase = HTTPStatus(status).phrase
                    except ValueError:
                        phrase = ""
                    log.raw(f'INFO:     {client} - "{self.command} {path} HTTP/1.1" {status} {phrase}')

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, handler):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler, bind_and_activate=False)

    def bind_only(self):
        self.server_bind()

    def listen(self):
        self.server_activate()


# --- main ---------------------------------------------------------------------------------------------

STARTUP_FILES: list[str] = []  # sockets to remove if a signal ends the start-up


def _phase_signal_handler(log: Log, engine: str):
    def handler(signum, frame):
        for path in STARTUP_FILES:
            try:
                os.remove(path)
            except OSError:
                pass
        name = signal.Signals(signum).name
        if engine == "tgi":
            log.tgi("INFO", "text_generation_launcher", f"Received {name} during start-up; exiting")
        else:
            log.vllm("INFO", "launcher.py", f"Received {name} during start-up; exiting")
        os._exit(0)
    return handler


def _bind(log: Log, engine: str, host: str, port: int, handler, what: str = "webserver") -> Server:
    srv = Server(host, port, handler)
    try:
        if 0 < port < 1024:
            # Jobs run as an ordinary user: privileged ports are refused (e.g. the TGI image's PORT=80).
            raise PermissionError(13, "Permission denied")
        srv.bind_only()
    except OSError as exc:
        srv.server_close()
        if engine == "tgi":
            die(log, 1,
                f"thread 'main' panicked at router/src/server.rs: called `Result::unwrap()` on an `Err` value: "
                f"Os {{ code: {exc.errno}, kind: {'PermissionDenied' if exc.errno == 13 else 'AddrInUse'}, "
                f"message: \"{exc.strerror}\" }} ({what} {host}:{port})",
                _tgi_line("ERROR", "text_generation_launcher", "Webserver Crashed"),
                _tgi_line("INFO", "text_generation_launcher", "Shutting down shards"),
                "Error: WebserverFailed")
        die(log, 1, f"ERROR {_dt.datetime.now().strftime('%m-%d %H:%M:%S')} [launcher.py] "
                    f"[Errno {exc.errno}] error while attempting to bind on address ('{host}', {port}): "
                    f"{exc.strerror.lower() if exc.strerror else exc}",
            f"OSError: [Errno {exc.errno}] {exc.strerror}")
    return srv


def _tgi_line(level, target, message):
    return f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {level:>5} {target}: {message}"


def _tgi_args_debug(args: dict) -> str:
    parts = []
    for name, _, _ in TGI_FLAGS:
        key = name.replace("-", "_")
        val = args.get(key)
        if val is None:
            parts.append(f"{key}: None")
        elif isinstance(val, bool):
            parts.append(f"{key}: {str(val).lower()}")
        elif isinstance(val, (int, float)):
            parts.append(f"{key}: {val}")
        else:
            parts.append(f"{key}: Some({json.dumps(str(val))})" if key in (
                "revision", "huggingface_hub_cache", "weights_cache_override", "api_key", "lora_adapters",
                "tokenizer_config_path", "cuda_graphs") else f"{key}: {json.dumps(str(val))}")
    return "Args { " + ", ".join(parts) + " }"


def run_tgi(argv: list[str]) -> None:
    log = Log("tgi")
    try:
        args = parse_tgi(argv, os.environ)
    except ClapError as exc:
        sys.stderr.write(str(exc) + "\n")
        sys.exit(2)
    log.json_output = args["json_output"]
    if args["api_key"]:
        log.secrets.append(args["api_key"])
    handler = _phase_signal_handler(log, "tgi")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

    # Like the real launcher: the Args line carries the key in clear (not through the redacting log).
    sys.stderr.write(_tgi_line("INFO", "text_generation_launcher", _tgi_args_debug(args)) + "\n")
    sys.stderr.flush()
    host = args["hostname"]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        log.tgi("WARN", "text_generation_router", f"Invalid hostname, defaulting to 0.0.0.0")
        host = "0.0.0.0"

    # Model: a local dir (no revision) is used as is; anything else is a Hub id, from the cache only.
    cache = args["huggingface_hub_cache"] or os.environ.get("HUGGINGFACE_HUB_CACHE") or None
    log.tgi("INFO", "download: text_generation_launcher", f"Starting check and download process for {args['model_id']}")
    path, err = resolve_model(args["model_id"], args["revision"], cache)
    if err:
        die(log, 1, _tgi_line("ERROR", "download: text_generation_launcher", f"Download encountered an error: \n{err}"),
            "Error: DownloadError")
    config = read_config(path)
    if config is None:
        die(log, 1,
            _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                      f"Shard complete standard error output:\n\nOSError: {path} does not appear to have a file named "
                      "config.json. Checkout 'https://huggingface.co/None/tree/None' for available files. rank=0"),
            _tgi_line("ERROR", "text_generation_launcher", "Shard 0 failed to start"),
            _tgi_line("INFO", "text_generation_launcher", "Shutting down shards"),
            "Error: ShardCannotStart")
    log.tgi("INFO", "download: text_generation_launcher", "Successfully downloaded weights for " + args["model_id"])

    # LoRA adapters: `id`, `id@rev` (Hub) or `name=path` (local).
    loras: dict[str, str] = {}
    if args["lora_adapters"]:
        for spec in args["lora_adapters"].split(","):
            spec = spec.strip()
            if spec.count("@") > 1 or not re.fullmatch(r"[^=@]+(=[^@]+)?(@.+)?", spec):
                die(log, 1, f'Error: ArgumentValidation("Invalid LoRA adapter format: {spec}")')
            name, _, rest = spec.partition("=")
            if rest:
                problem = check_adapter_dir(rest.split("@")[0])
                if problem:
                    die(log, 1, _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                                          f"Error when initializing model\nValueError: {problem} rank=0"),
                        _tgi_line("ERROR", "text_generation_launcher", "Shard 0 failed to start"),
                        "Error: ShardCannotStart")
                loras[name] = rest
            else:
                apath, aerr = resolve_model(name.split("@")[0], None, cache)
                if aerr:
                    die(log, 1, _tgi_line("ERROR", "download: text_generation_launcher",
                                          f"Download encountered an error: \n{aerr}"), "Error: DownloadError")
                loras[name] = apath

    max_pos = config.get("max_position_embeddings") or config.get("n_positions") or config.get("max_seq_len")
    max_default = 4096
    max_pos = min(max_pos, max_default) if max_pos else max_default
    if args["max_input_tokens"] is not None and args["max_input_length"] is not None:
        die(log, 1, f"Error: ArgumentValidation(\"Both `max_input_tokens` ({args['max_input_tokens']}) and "
                    f"`max_input_length` ({args['max_input_length']}) are set. Please define only "
                    "`max_input_tokens` as `max_input_length is deprecated for naming consistency.\")")
    max_input = args["max_input_tokens"] if args["max_input_tokens"] is not None else args["max_input_length"]
    if max_input is None:
        max_input = max_pos - 1
        log.info(f"Default `max_input_tokens` to {max_input}")
    max_total = args["max_total_tokens"]
    if max_total is None:
        max_total = max_pos
        log.info(f"Default `max_total_tokens` to {max_total}")
    prefill = args["max_batch_prefill_tokens"]
    if prefill is None:
        prefill = max_input + 50
        log.info(f"Default `max_batch_prefill_tokens` to {prefill}")
    if max_input >= max_total:
        die(log, 1, 'Error: ArgumentValidation("`max_input_tokens must be < `max_total_tokens`")')
    if max_input > prefill:
        die(log, 1, f'Error: ArgumentValidation("`max_batch_prefill_tokens` must be >= `max_input_tokens`. '
                    f'Given: {prefill} and {max_input}")')
    if args["max_batch_total_tokens"] is not None and max_total > args["max_batch_total_tokens"]:
        die(log, 1, f'Error: ArgumentValidation("`max_total_tokens` must be <= `max_batch_total_tokens`. '
                    f'Given: {max_total} and {args["max_batch_total_tokens"]}")')
    if args["dtype"] and args["quantize"]:
        die(log, 1, "error: the argument '--dtype <DTYPE>' cannot be used with '--quantize <QUANTIZE>'")
    if args["trust_remote_code"]:
        log.tgi("WARN", "text_generation_launcher",
                f"`trust_remote_code` is set. Trusting that model `{args['model_id']}` do not contain malicious code.")

    # Shards: count from --num-shard, else the visible GPUs; heads must divide evenly.
    gpus = visible_gpu_count()
    if args["sharded"] == "false" and (args["num_shard"] or 1) > 1:
        die(log, 1, 'Error: ArgumentValidation("Sharding is disabled (`--sharded false`) but '
                    f'`num_shard` is {args["num_shard"]}")')
    num_shard = args["num_shard"] or (gpus if gpus else 1)
    if args["sharded"] == "true" and num_shard < 2:
        die(log, 1, 'Error: ArgumentValidation("`sharded` is true but `num_shard` <= 1")')
    if num_shard == 0:
        die(log, 1, 'Error: ArgumentValidation("`num_shard` cannot be 0")')
    if num_shard > 1:
        log.info(f"Sharding model on {num_shard} processes")
    if gpus is not None and num_shard > gpus:
        die(log, 1, _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                              f"Shard complete standard error output:\n\nRuntimeError: CUDA error: invalid device "
                              f"ordinal ({num_shard} shards, {gpus} visible GPUs) rank={gpus}"),
            _tgi_line("ERROR", "text_generation_launcher", f"Shard {gpus} failed to start"),
            "Error: ShardCannotStart")
    heads = config.get("num_attention_heads")
    if num_shard > 1 and isinstance(heads, int) and heads % num_shard:
        die(log, 1, _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                              f"Error when initializing model\nValueError: `num_heads` must be divisible by "
                              f"`num_shards` (got `num_heads`: {heads} and `num_shards`: {num_shard} rank=0"),
            _tgi_line("ERROR", "text_generation_launcher", "Shard 0 failed to start"),
            "Error: ShardCannotStart")

    # Per-job resources that collide between jobs on one node: shard sockets, master port.
    uds_socks = []
    for rank in range(num_shard):
        uds = f"{args['shard_uds_path']}-{rank}"
        try:
            if os.path.lexists(uds):
                os.remove(uds)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(uds)
            s.listen(1)
            uds_socks.append((s, uds))
            STARTUP_FILES.append(uds)
        except OSError as exc:
            die(log, 1, f"thread '<unnamed>' panicked at launcher/src/main.rs: {exc.strerror or exc} ({uds})",
                _tgi_line("ERROR", "text_generation_launcher", f"Shard {rank} failed to start"),
                "Error: ShardCannotStart")
    master = None
    if num_shard > 1:
        master = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            master.bind(("127.0.0.1" if args["master_addr"] == "localhost" else args["master_addr"],
                         args["master_port"]))
            master.listen(1)
        except OSError:
            die(log, 1, _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                                  "Shard complete standard error output:\n\ntorch.distributed.DistNetworkError: The "
                                  "server socket has failed to listen on any local network address. port: "
                                  f"{args['master_port']}, useIpv6: false, code: -98, name: EADDRINUSE, message: "
                                  "address already in use rank=0"),
                _tgi_line("ERROR", "text_generation_launcher", "Shard 0 failed to start"),
                "Error: ShardCannotStart")

    t0 = time.monotonic()
    for rank in range(num_shard):
        log.tgi("INFO", "shard-manager: text_generation_launcher", f"Starting shard rank={rank}")
    try:
        model = Model(path, args["trust_remote_code"])
    except Exception as exc:  # noqa: BLE001
        die(log, 1, _tgi_line("ERROR", "shard-manager: text_generation_launcher",
                              f"Error when initializing model\n{type(exc).__name__}: {exc} rank=0"),
            _tgi_line("ERROR", "text_generation_launcher", "Shard 0 failed to start"),
            "Error: ShardCannotStart")
    for rank in range(num_shard):
        log.tgi("INFO", "shard-manager: text_generation_launcher",
                f"Shard ready in {time.monotonic() - t0:.2f}s rank={rank}")
    log.info("Starting Webserver")

    shown_id = container_path(args["model_id"])
    loras = {name: container_path(p) for name, p in loras.items()}
    engine = Engine("tgi", log, model, model_id=shown_id, served_names=[shown_id],
                    api_keys=[args["api_key"]] if args["api_key"] else [], max_input=max_input,
                    max_total=max_total, max_concurrent=args["max_concurrent_requests"], loras=loras,
                    model_root=container_path(path))
    log.tgi("INFO", "text_generation_router_v3", "Warming up model")
    # The metrics listener first (its own port), then the API port; a taken port crashes the router.
    prom = _bind(log, "tgi", host, args["prometheus_port"], make_handler(engine), "prometheus")
    srv = _bind(log, "tgi", host, args["port"], make_handler(engine))
    for s in (prom, srv):
        s.listen()
    actual = srv.server_address[1]
    log.tgi("INFO", "text_generation_router::server", f"Serving on {host}:{actual} (metrics on port "
            f"{prom.server_address[1]})")
    log.tgi("INFO", "text_generation_router::server", "Connected")

    def shutdown_msgs():
        log.tgi("INFO", "text_generation_router::server", "signal received, starting graceful shutdown")
        log.info("Terminating webserver")
        log.info("Waiting for webserver to gracefully shutdown")
        log.info("webserver terminated")
        for rank in range(num_shard):
            log.tgi("INFO", "shard-manager: text_generation_launcher", f"Terminating shard rank={rank}")
            log.tgi("INFO", "shard-manager: text_generation_launcher", f"Shard terminated rank={rank}")

    def cleanup():
        for s, p in uds_socks:
            s.close()
            try:
                os.remove(p)
            except OSError:
                pass
        if master is not None:
            master.close()

    serve_until_signal([srv, prom], shutdown_msgs, cleanup)


def run_vllm(argv: list[str]) -> None:
    log = Log("vllm")
    parser = make_vllm_parser()
    args = parser.parse_args(argv)  # exits 2 on unknown flags, like vLLM's argparse
    model_arg = args.model_tag or args.model
    shown_model = container_path(model_arg)
    keys = args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])
    log.secrets.extend(keys)
    handler = _phase_signal_handler(log, "vllm")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if args.uds:
        die(log, 1, "ERROR: --uds is not supported by the kit stand-in")

    log.vllm("INFO", "utils.py", f"vLLM API server version {VLLM_VERSION}")
    defaults = vars(make_vllm_parser().parse_args([]))
    shown = {k: v for k, v in vars(args).items() if k != "api_key" and v != defaults.get(k)}
    log.vllm("INFO", "utils.py", f"non-default args: {shown}")

    served = args.served_model_name or [shown_model]
    path, err = resolve_model(model_arg, args.revision, args.download_dir)
    if err:
        die(log, 1, "Traceback (most recent call last):", '  File "vllm/transformers_utils/config.py", in get_config',
            f"ValueError: Invalid repository ID or local directory specified: '{model_arg}'.\n"
            f"Please verify the following requirements:\n1. Provide a valid Hugging Face repository ID.\n"
            f"2. Specify a local directory that contains a recognized configuration file.\n"
            f"   - For Hugging Face models: ensure the presence of a 'config.json'.\n({err})")
    config = read_config(path)
    if config is None:
        die(log, 1, "Traceback (most recent call last):", '  File "vllm/transformers_utils/config.py", in get_config',
            f"ValueError: Invalid repository ID or local directory specified: '{model_arg}'.\n"
            "Please verify the following requirements:\n1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'.")

    derived = (config.get("max_position_embeddings") or config.get("n_positions")
               or config.get("max_seq_len") or 2048)
    max_len = args.max_model_len
    if max_len is None or max_len == -1:
        max_len = derived
    elif max_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") not in ("1", "true", "True"):
        die(log, 1, f"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                    f"  Value error, User-specified max_model_len ({max_len}) is greater than the derived "
                    f"max_model_len (max_position_embeddings={derived} or model_max_length=None in model's "
                    "config.json). To allow overriding this maximum, set the env var "
                    "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme "
                    "caution. If the model uses relative position encoding (RoPE), positions exceeding derived "
                    "max_model_len lead to nan. If the model uses absolute position encoding, positions exceeding "
                    "derived max_model_len will cause a CUDA array out-of-bounds error.")
    tp = args.tensor_parallel_size
    heads = config.get("num_attention_heads")
    if tp < 1:
        die(log, 1, "ValueError: tensor_parallel_size must be >= 1")
    if isinstance(heads, int) and heads % tp:
        die(log, 1, f"ValueError: Total number of attention heads ({heads}) must be divisible by tensor "
                    f"parallel size ({tp}).")
    gpus = visible_gpu_count()
    world = tp * args.pipeline_parallel_size
    if gpus is not None and world > gpus:
        die(log, 1, f"ValueError: World size ({world}) is larger than the number of available GPUs ({gpus}) "
                    "in this node. If this is intentional and you are using Ray, set "
                    "--distributed-executor-backend ray.")
    if not 0 < args.gpu_memory_utilization <= 1:
        die(log, 1, f"ValueError: GPU memory utilization must be within (0, 1]. Got "
                    f"{args.gpu_memory_utilization}.")

    loras: dict[str, str] = {}
    for spec in args.lora_modules or []:
        if spec.lstrip().startswith("{"):
            try:
                obj = json.loads(spec)
                name, lpath = obj["name"], obj["path"]
            except (ValueError, KeyError, TypeError):
                parser.error(f"argument --lora-modules: Invalid JSON format for --lora-modules: {spec}")
        else:
            name, eq, lpath = spec.partition("=")
            if not eq or not name or not lpath:
                parser.error(f"argument --lora-modules: Invalid format for --lora-modules: {spec}. "
                             "Expected 'name=path' or JSON")
        loras[name] = lpath
    if loras and not args.enable_lora:
        die(log, 1, "ValueError: LoRA modules were given (--lora-modules) but LoRA is not enabled "
                    "(--enable-lora)")
    for name, lpath in loras.items():
        problem = check_adapter_dir(lpath)
        if problem:
            die(log, 1, f"ValueError: Loading lora {name} failed: {problem}")
        try:
            with open(os.path.join(lpath, "adapter_config.json")) as f:
                rank = int(json.load(f).get("r", 0))
        except (OSError, ValueError, TypeError):
            rank = 0
        if rank > args.max_lora_rank:
            die(log, 1, f"ValueError: LoRA rank {rank} is greater than max_lora_rank {args.max_lora_rank}.")
    if len(loras) > 0 and args.max_loras < 1:
        die(log, 1, "ValueError: max_loras (0) must be >= 1")

    # vLLM binds its socket before building the engine (so a taken port fails fast) but only
    # listens once the engine is up: until then connections are refused.
    host = args.host or "0.0.0.0"
    srv = _bind(log, "vllm", host, args.port, None)

    t0 = time.monotonic()
    log.vllm("INFO", "model.py", f"Resolved architecture: {(config.get('architectures') or ['?'])[0]}")
    log.vllm("INFO", "model.py", f"Using max model len {max_len}")
    try:
        model = Model(path, args.trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        die(log, 1, f"ERROR {_dt.datetime.now().strftime('%m-%d %H:%M:%S')} [core.py] EngineCore failed to start.",
            f"{type(exc).__name__}: {exc}",
            "RuntimeError: Engine core initialization failed. See root cause above.")
    log.vllm("INFO", "gpu_model_runner.py", f"Model loading took {time.monotonic() - t0:.2f} seconds (stand-in, CPU)")
    for name, lpath in loras.items():
        log.vllm("INFO", "serving_models.py", f"Loaded new LoRA adapter: name '{name}', path '{lpath}'")

    engine = Engine("vllm", log, model, model_id=shown_model, served_names=served, api_keys=keys,
                    max_input=max_len, max_total=max_len, max_concurrent=1 << 30,
                    loras={n: container_path(p) for n, p in loras.items()}, model_root=shown_model)
    srv.RequestHandlerClass = make_handler(engine)
    try:
        srv.listen()
    except OSError as exc:
        die(log, 1, f"OSError: [Errno {exc.errno}] {exc.strerror}")
    actual = srv.server_address[1]
    log.vllm("INFO", "api_server.py", f"Starting vLLM API server 0 on http://{host}:{actual}")
    log.vllm("INFO", "launcher.py", "Available routes are: /health, /ping, /version, /load, /metrics, "
                                    "/v1/models, /v1/chat/completions, /v1/completions")
    log.raw(f"INFO:     Started server process [{os.getpid()}]")
    log.raw("INFO:     Waiting for application startup.")
    log.raw("INFO:     Application startup complete.")

    def shutdown_msgs():
        log.raw("INFO:     Shutting down")
        log.raw("INFO:     Waiting for application shutdown.")
        log.raw("INFO:     Application shutdown complete.")
        log.raw(f"INFO:     Finished server process [{os.getpid()}]")

    serve_until_signal([srv], shutdown_msgs, lambda: None)


def serve_until_signal(servers: list[Server], shutdown_msgs, cleanup) -> None:
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
               for s in servers]
    for t in threads:
        t.start()
    while not stop.wait(0.2):
        pass
    shutdown_msgs()
    for s in servers:
        s.shutdown()
        s.server_close()
    cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--engine" or argv[1] not in ("tgi", "vllm"):
        sys.stderr.write("usage: engine.py --engine tgi|vllm <the engine's own flags>\n")
        sys.exit(2)
    if argv[1] == "tgi":
        run_tgi(argv[2:])
    else:
        run_vllm(argv[2:])


if __name__ == "__main__":
    main()
