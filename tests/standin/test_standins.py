"""The stand-ins themselves: the tiny model, the engine stand-ins (TGI and vLLM), Weaviate's, TEI's flags and
the container runtime stand-in. Everything runs for real on the CPU; nothing is downloaded. (TEI's
embeddings are checked through a running RAG stack job in tests/test_rag_stack.py.)

The two serving engines are started once for the module (in parallel, through the runtime stand-in:
`singularity run IMAGE ...` for TGI, `apptainer exec IMAGE vllm serve ...` for vLLM) and stopped
with SIGTERM by the last test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import pytest

from standin import flags, routes
from standin.tgi import TGI
from standin.tiny_model import build_tiny_chat_model

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
TGI_KEY = "tgi-Secret-123"
VLLM_KEY = "vllm-secret-456"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello! How are you today?"}]
START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def standin_env(base: Path | None = None, **extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["KIT_STANDIN_PYTHON"] = sys.executable
    env["HF_HUB_OFFLINE"] = "1"
    for name in ("API_KEY", "VLLM_API_KEY", "PORT", "HOSTNAME", "KIT_STANDIN_LOG", "KIT_STANDIN_ORAS_ROOT",
                 "KIT_STANDIN_PULL_FAIL_AFTER", "KIT_STANDIN_PULL_CORRUPT", "KIT_STANDIN_NO_FAKEROOT",
                 "SINGULARITY_CACHEDIR", "SINGULARITY_TMPDIR", "APPTAINER_CACHEDIR", "APPTAINER_TMPDIR"):
        env.pop(name, None)
    for name in [k for k in env if k.startswith(("SINGULARITYENV_", "APPTAINERENV_"))]:
        env.pop(name)
    if base is not None:
        env["HF_HOME"] = str(base / "hf")
        env["HF_HUB_CACHE"] = str(base / "hf" / "hub")
    env.update(extra)
    return env


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_healthy(proc: subprocess.Popen, port: int, err_file: Path, timeout: float = START_TIMEOUT) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"engine exited with {proc.returncode} before /health:\n{err_file.read_text()}")
        try:
            if http("GET", f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"engine not healthy after {timeout} s:\n{err_file.read_text()}")


def run(cmd: list[str], env: dict, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat-model"))


def stand_in_image(path: Path, runscript: str, environment: str = "") -> Path:
    path.write_text(f"#!kit-standin image\nBootstrap: docker\n%environment\n{environment}\n%runscript\n    {runscript}\n")
    return path


class Engines:
    pass


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory):
    """TGI (via `singularity run`) and vLLM (via `apptainer exec`) serving the tiny model, started
    in parallel."""
    base = tmp_path_factory.mktemp("engines")
    e = Engines()
    e.base = base
    e.log = base / "runtime.jsonl"
    e.tgi_image = stand_in_image(base / "tgi.sif", 'exec text-generation-launcher "$@"',
                                 "    export PORT=80\n    export HF_HOME=/data")
    e.vllm_image = stand_in_image(base / "vllm.sif", 'exec vllm serve "$@"')
    (base / "data").mkdir()
    e.tgi_port, e.prom_port, e.vllm_port = free_port(), free_port(), free_port()

    env = standin_env(base, KIT_STANDIN_LOG=str(e.log))
    tgi_env = dict(env, SINGULARITYENV_API_KEY=TGI_KEY, SINGULARITYENV_USAGE_STATS="off",
                   APPTAINERENV_API_KEY="ignored-by-singularityce")
    e.tgi_err = base / "tgi.err"
    files = [open(base / name, "w") for name in ("tgi.err", "vllm.err")]
    e.tgi = subprocess.Popen(
        ["singularity", "run", "--nv", "--bind", f"{tiny_model}:/models/tiny:ro", "--bind", f"{base / 'data'}:/data",
         str(e.tgi_image), "--model-id", "/models/tiny", "--hostname", "127.0.0.1", "--port", str(e.tgi_port),
         "--prometheus-port", str(e.prom_port), "--shard-uds-path", str(base / "tgi-uds"), "--max-total-tokens", "512",
         "--max-input-tokens", "256"],
        env=tgi_env, stdout=subprocess.DEVNULL, stderr=files[0], stdin=subprocess.DEVNULL)
    vllm_env = dict(env, APPTAINERENV_VLLM_API_KEY=VLLM_KEY)
    e.vllm_err = base / "vllm.err"
    e.vllm = subprocess.Popen(
        ["apptainer", "exec", "--nv", "--bind", f"{tiny_model}:/models/tiny", str(e.vllm_image),
         "vllm", "serve", "/models/tiny", "--served-model-name", "tiny", "--host", "127.0.0.1",
         "--port", str(e.vllm_port), "--max-model-len", "1000", "--disable-log-stats"],
        env=vllm_env, stdout=subprocess.DEVNULL, stderr=files[1], stdin=subprocess.DEVNULL)
    e.tgi_ready_s = wait_healthy(e.tgi, e.tgi_port, e.tgi_err)
    e.vllm_ready_s = wait_healthy(e.vllm, e.vllm_port, e.vllm_err)
    e.tgi_url, e.vllm_url = f"http://127.0.0.1:{e.tgi_port}", f"http://127.0.0.1:{e.vllm_port}"
    yield e
    for p in (e.tgi, e.vllm):
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in files:
        f.close()


@pytest.fixture
def online(monkeypatch):
    """InferenceClient refuses every URL in offline mode, and huggingface_hub reads HF_HUB_OFFLINE
    (or TRANSFORMERS_OFFLINE) once, at import: clear both and the already-imported constant."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


# --- the tiny model ----------------------------------------------------------------------------------

def test_tiny_model_loads_offline_and_generates(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads) == ("llama", 64, 2, 4, 2)
    assert cfg.vocab_size == len(tok)
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "</s>", "<unk>", "<pad>"]
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s><|system|>\nYou are a helpful assistant.</s>\n<|user|>\n")
    assert text.endswith("<|assistant|>\n")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply and reply.isascii()
    assert (tiny_model / "model.safetensors").is_file() and not any(tiny_model.glob("*.bin"))

    again = build_tiny_chat_model(tmp_path / "again")
    for f in sorted(tiny_model.iterdir()):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


# --- engines: start, readiness, routes ------------------------------------------------------------------

def test_engines_become_healthy_and_describe_themselves(engines, tiny_model):
    e = engines
    assert e.tgi_ready_s < START_TIMEOUT and e.vllm_ready_s < START_TIMEOUT
    assert http("GET", f"{e.tgi_url}/health") == (200, b"")
    assert http("GET", f"{e.vllm_url}/health") == (200, b"")

    status, body = http("GET", f"{e.tgi_url}/info")
    info = json.loads(body)
    # The runtime ran the launcher on the host: the bind's container path became the host path.
    assert status == 200 and info["version"] == "3.3.7" and info["model_id"] == str(tiny_model)
    assert (info["max_input_tokens"], info["max_total_tokens"]) == (256, 512)
    status, body = http("GET", f"{e.tgi_url}/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [str(tiny_model)]

    assert json.loads(http("GET", f"{e.vllm_url}/version")[1]) == {"version": "0.19.1"}
    status, body = http("GET", f"{e.vllm_url}/v1/models", headers={"Authorization": f"Bearer {VLLM_KEY}"})
    card = json.loads(body)["data"][0]
    assert status == 200 and card["id"] == "tiny" and card["max_model_len"] == 1000
    assert card["root"] == str(tiny_model)
    # The image's ENV (PORT=80) did not win over --port; its PROMETHEUS port listens too.
    assert http("GET", f"http://127.0.0.1:{e.prom_port}/metrics")[0] == 200


def test_tgi_auth_covers_generation_routes_only(engines):
    url = engines.tgi_url
    for path in ("/health", "/info", "/v1/models", "/metrics"):
        assert http("GET", url + path)[0] == 200, path
    gen = {"inputs": "Hello there", "parameters": {"max_new_tokens": 4}}
    chat = {"model": "tgi", "messages": MESSAGES, "max_tokens": 4}
    for path, body in (("/generate", gen), ("/v1/chat/completions", chat), ("/", gen)):
        assert http("POST", url + path, body) == (401, b""), path  # TGI: a bare 401
        assert http("POST", url + path, body, {"Authorization": "Bearer wrong"})[0] == 401
        assert http("POST", url + path, body, {"Authorization": f"Bearer {TGI_KEY}"})[0] == 200
    # TGI compares the whole header case-insensitively.
    assert http("POST", url + "/generate", gen, {"Authorization": f"bearer {TGI_KEY.upper()}"})[0] == 200
    # The SINGULARITYENV_ key reached the engine; APPTAINERENV_ is not read by SingularityCE.
    assert http("POST", url + "/generate", gen, {"Authorization": "Bearer ignored-by-singularityce"})[0] == 401


def test_vllm_auth_covers_every_v1_path(engines):
    url = engines.vllm_url
    assert http("GET", url + "/health")[0] == 200
    assert http("GET", url + "/version")[0] == 200
    assert http("GET", url + "/metrics")[0] == 200
    status, body = http("GET", url + "/v1/models")
    assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
    assert http("GET", url + "/v1/models", headers={"Authorization": "Bearer nope"})[0] == 401
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
    assert http("POST", url + "/v1/chat/completions", chat)[0] == 401
    status, body = http("POST", url + "/v1/chat/completions", chat, {"Authorization": f"Bearer {VLLM_KEY}"})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["role"] == "assistant"


def test_generation_is_real_and_validated(engines, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tgi = {"Authorization": f"Bearer {TGI_KEY}"}
    vllm = {"Authorization": f"Bearer {VLLM_KEY}"}
    status, body = http("POST", engines.tgi_url + "/generate",
                        {"inputs": "The cluster has", "parameters": {"max_new_tokens": 6, "details": True}}, tgi)
    out = json.loads(body)
    assert status == 200 and out["generated_text"] and out["details"]["generated_tokens"] <= 6
    # Same greedy model behind both flavours: the same chat prompt gives the same reply.
    replies = []
    for url, headers, model in ((engines.tgi_url, tgi, "tgi"), (engines.vllm_url, vllm, "tiny")):
        status, body = http("POST", url + "/v1/chat/completions",
                            {"model": model, "messages": MESSAGES, "max_tokens": 6}, headers)
        out = json.loads(body)
        assert status == 200 and out["usage"]["completion_tokens"] <= 6, out
        replies.append(out["choices"][0]["message"]["content"])
    assert replies[0] == replies[1] and replies[0]
    tok = AutoTokenizer.from_pretrained(tiny_model)  # the reply is the model's own greedy one
    ids = tok(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False, return_tensors="pt")
    out = AutoModelForCausalLM.from_pretrained(tiny_model).generate(**ids, max_new_tokens=6, do_sample=False,
                                                                    pad_token_id=tok.pad_token_id)
    assert replies[0] == tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    # Context limits: TGI 422 (max_total_tokens 512), vLLM 400 (max_model_len 1000).
    status, body = http("POST", engines.tgi_url + "/generate",
                        {"inputs": "Hello", "parameters": {"max_new_tokens": 600}}, tgi)
    assert status == 422 and json.loads(body)["error_type"] == "validation"
    status, body = http("POST", engines.vllm_url + "/v1/chat/completions",
                        {"model": "tiny", "messages": MESSAGES, "max_tokens": 2000}, vllm)
    assert status == 400 and "maximum context length is 1000" in json.loads(body)["error"]["message"]
    # vLLM: an unknown model name is a 404.
    status, body = http("POST", engines.vllm_url + "/v1/chat/completions",
                        {"model": "other", "messages": MESSAGES, "max_tokens": 2}, vllm)
    assert status == 404 and json.loads(body)["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize("flavour", ["tgi", "vllm"])
def test_inference_client_chat_stream_and_health(engines, online, flavour):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    url, key = (engines.tgi_url, TGI_KEY) if flavour == "tgi" else (engines.vllm_url, VLLM_KEY)
    client = InferenceClient(model=url, api_key=key)
    # health_check() refuses unless the provider is named ("Health check is not supported on 'None'").
    assert InferenceClient(model=url, provider="hf-inference").health_check() is True
    # With model=URL, InferenceClient sends "model": "dummy": TGI ignores it, vLLM does not.
    kwargs = {} if flavour == "tgi" else {"model": "tiny"}
    if flavour == "vllm":
        with pytest.raises(HfHubHTTPError) as err:
            client.chat_completion(messages=MESSAGES, max_tokens=8)
        assert err.value.response.status_code == 404
    out = client.chat_completion(messages=MESSAGES, max_tokens=8, **kwargs)
    text = out.choices[0].message.content
    assert isinstance(text, str) and text and out.usage.completion_tokens <= 8
    assert out.choices[0].finish_reason in ("length", "stop")
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat_completion(messages=MESSAGES, max_tokens=8, stream=True, **kwargs) if c.choices]
    assert "".join(pieces) == text and len(pieces) >= 2
    # kit's own way: base_url=<url>/v1 and the served model name.
    kit_style = InferenceClient(base_url=url + "/v1", api_key=key)
    assert kit_style.chat_completion(messages=MESSAGES, max_tokens=8,
                                     model="tgi" if flavour == "tgi" else "tiny").choices[0].message.content == text
    with pytest.raises(HfHubHTTPError) as err:
        InferenceClient(model=url, api_key="wrong").chat_completion(messages=MESSAGES, max_tokens=2, **kwargs)
    assert err.value.response.status_code == 401


# --- engines: the pinned route tables and each engine's key rule ------------------------------------------

# One body every listed route accepts: each handler reads its own fields.
ANY_BODY = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "prompt": "Hello", "inputs": "Hello",
            "parameters": {"max_new_tokens": 2}, "instances": [{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}],
            "token_ids": [5, 6, 7], "sampling_params": {"max_tokens": 2}, "tokens": [5, 6]}


def concrete(route: routes.Route) -> tuple[str, str]:
    """(method, path) of a request this route serves."""
    path = route.path.replace("{response_id}", "resp-1").replace("*rest", "swagger-ui.css")
    return ("DELETE" if route.method == "ANY" else route.method), path + ("/extra" if route.prefix else "")


def test_route_tables_follow_each_engines_key_rule():
    tgi, vllm = routes.table("tgi"), routes.table("vllm")
    assert (len(tgi), len(vllm)) == (19, 28)
    assert len(set(tgi)) == len(tgi) and len(set(vllm)) == len(vllm)
    # vLLM: the key on every path under /v1 and nowhere else; /invocations and /inference/v1/generate open.
    assert routes.spec("vllm")["key"]["prefixes"] == ["/v1"]
    assert all(r.key == r.path.startswith("/v1") for r in vllm)
    # TGI: the key on its generation routes only (base_routes in router/src/server.rs).
    assert {(r.method, r.path) for r in tgi if r.key} == {("POST", p) for p in (
        "/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/vertex",
        "/invocations", "/tokenize")}
    # What a stand-in implements is in its table; anything else fails its start.
    TGI(None, "m", 8, 16, None).check_table()
    broken = TGI(None, "m", 8, 16, None)
    broken.handlers[("GET", "/not-upstream")] = None
    with pytest.raises(RuntimeError, match="not-upstream"):
        broken.check_table()


@pytest.mark.parametrize("flavour", ["tgi", "vllm"])
def test_every_listed_route_answers_behind_the_engines_own_key_rule(engines, flavour):
    url, key = (engines.tgi_url, TGI_KEY) if flavour == "tgi" else (engines.vllm_url, VLLM_KEY)
    refused = (401, b"") if flavour == "tgi" else (401, b'{"error": "Unauthorized"}')
    open_routes = []
    for route in routes.table(flavour):
        method, path = concrete(route)
        body = None if method == "GET" else ANY_BODY
        status, out = http(method, url + path, body)
        if route.key:
            assert (status, out) == refused, (route, status, out)
        else:
            assert status == 200, (route, status, out)
            open_routes.append(path)
        assert http(method, url + path, body, {"Authorization": f"Bearer {key}"})[0] == 200, route
    if flavour == "vllm":  # without a guard, vLLM generates for anyone on these two
        assert {"/invocations", "/inference/v1/generate"} <= set(open_routes)
        status, out = http("POST", url + "/invocations", {"model": "tiny", "messages": MESSAGES, "max_tokens": 2})
        assert status == 200 and json.loads(out)["choices"][0]["message"]["role"] == "assistant"
        status, out = http("POST", url + "/inference/v1/generate", {"token_ids": [5, 6, 7]})
        assert status == 200 and all(isinstance(t, int) for t in json.loads(out)["choices"][0]["token_ids"])
    else:
        assert not {"/invocations", "/generate", "/v1/completions"} & set(open_routes)


def test_unlisted_routes_and_the_edges_of_each_key_rule(engines):
    tgi, vllm = engines.tgi_url, engines.vllm_url
    tgi_key, vllm_key = {"Authorization": f"Bearer {TGI_KEY}"}, {"Authorization": f"Bearer {VLLM_KEY}"}
    for url in (tgi, vllm):
        assert http("GET", url + "/nope")[0] == 404
        assert http("POST", url + "/health", {})[0] == 405
    # TGI: the auth layer also wraps a generation path's 405; `/` keeps the info router's fallback.
    assert http("GET", tgi + "/generate") == (401, b"")
    assert http("GET", tgi + "/generate", headers=tgi_key)[0] == 405
    assert http("PUT", tgi + "/", {})[0] == 405
    assert http("GET", tgi + "/v1/nope")[0] == 404
    # vLLM: every path under /v1 needs the key, listed or not; the scheme is case-insensitive, the key not.
    assert http("GET", vllm + "/v1/nope")[0] == 401
    assert http("GET", vllm + "/v1/nope", headers=vllm_key)[0] == 404
    assert http("GET", vllm + "/v1/models", headers={"Authorization": f"bearer {VLLM_KEY}"})[0] == 200
    assert http("GET", vllm + "/v1/models", headers={"Authorization": f"Bearer {VLLM_KEY.upper()}"})[0] == 401
    assert http("GET", vllm + "/v1/models", headers={"Authorization": f"Basic {VLLM_KEY}"})[0] == 401
    # vLLM mounts the prometheus app on every path that starts with /metrics, for every method.
    assert http("POST", vllm + "/metrics/anything", {})[0] == 200


class UnixHTTPConnection(HTTPConnection):
    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_http(path: str, method: str, url: str, body=None, headers: dict | None = None):
    conn = UnixHTTPConnection(path)
    try:
        conn.request(method, url, None if body is None else json.dumps(body),
                     {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_vllm_serves_on_a_unix_socket(tiny_model, tmp_path):
    sock, port = tmp_path / "engine.sock", free_port()
    env = standin_env(tmp_path, VLLM_API_KEY=VLLM_KEY)
    cmd = ["vllm", "serve", str(tiny_model), "--served-model-name", "tiny", "--uds", str(sock),
           "--host", "127.0.0.1", "--port", str(port)]
    err = tmp_path / "vllm.err"
    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: os.umask(0o077))
    try:
        start = time.monotonic()
        while True:
            assert proc.poll() is None and time.monotonic() - start < START_TIMEOUT, err.read_text()
            try:
                if unix_http(str(sock), "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o700  # the umask's
        with socket.socket() as s:  # host and port are ignored
            assert s.connect_ex(("127.0.0.1", port)) != 0
        assert unix_http(str(sock), "GET", "/v1/models")[0] == 401
        status, body = unix_http(str(sock), "GET", "/v1/models", headers={"Authorization": f"Bearer {VLLM_KEY}"})
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"
        status, body = unix_http(str(sock), "POST", "/invocations", {"prompt": "Hello", "max_tokens": 2})
        assert status == 200 and json.loads(body)["object"] == "text_completion"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert "unix:" in err.read_text() and '"POST /invocations" 200' in err.read_text()
    # The socket file stays; like vLLM (no unlink before bind), the next start on it fails fast.
    assert sock.is_socket()
    t0 = time.monotonic()
    res = run(cmd, env)
    assert res.returncode == 1 and "Address already in use" in res.stderr, res.stderr
    assert time.monotonic() - t0 < 3


# --- engines: flags from the pinned sets ----------------------------------------------------------------

def parse_fails(engine: str, argv: list[str], environ=None) -> bool:
    try:
        flags.parse(engine, argv, environ or {})
    except SystemExit as exc:
        return exc.code == 2
    return False


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_every_pinned_flag_parses_with_its_kind(engine):
    pinned = flags.spec(engine)
    for flag, takes_value in pinned["flags"].items():
        if flag in ("--help", "--version"):
            continue
        value = str(pinned.get("choices", {}).get(flag, ["1"])[0])
        if takes_value:
            assert flags.parse(engine, [flag, value], {})[0][flag] in (value, [value])
            assert parse_fails(engine, [flag]), f"{flag} without its value"
        else:
            negates = flag in pinned.get("no_forms", [])  # --no-X sets --X to False
            assert flags.parse(engine, [flag], {})[0] == ({"--" + flag[5:]: False} if negates else {flag: True})
            assert parse_fails(engine, [flag + "=1"]), f"{flag} is a switch"


def test_flags_follow_each_engines_parser():
    assert parse_fails("tgi", ["--model-id", "m", "--bogus-flag", "1"])
    assert parse_fails("tgi", ["--max-total-tokens", "--port", "1"])  # a flag is not a value
    assert parse_fails("tgi", ["--quantize", "int3"])  # not one of the choices
    assert parse_fails("tgi", [], {"USAGE_STATS": "sometimes"})  # env values are checked too
    assert parse_fails("vllm", ["--swap-space", "4"])  # gone from the pinned vLLM
    args, positional = flags.parse("tgi", ["--port=8080"], {"API_KEY": "k", "PORT": "80", "TRUST_REMOTE_CODE": "true"})
    assert (args, positional) == ({"--port": "8080", "--api-key": "k", "--trust-remote-code": True}, [])
    args, positional = flags.parse("vllm", ["/m", "-tp", "2", "--max_model_len", "9", "--no-enable-lora",
                                            "--api-key", "a", "b", "--served-model-name", "x"], {"VLLM_API_KEY": "env"})
    assert positional == ["/m"] and args == {"--tensor-parallel-size": "2", "--max-model-len": "9",
                                             "--enable-lora": False, "--api-key": ["a", "b"],
                                             "--served-model-name": ["x"]}
    assert flags.parse("vllm", [], {"VLLM_API_KEY": "env"})[0] == {"--api-key": ["env"]}


@pytest.mark.parametrize("cmd", [
    ["text-generation-launcher", "--model-id", "/x", "--bogus-flag", "1"],
    ["text-generation-launcher", "--port", "notanumber"],
    ["vllm", "serve", "/x", "--bogus-flag", "1"],
    ["vllm", "generate", "/x"],
])
def test_a_bad_command_line_exits_2(cmd, tmp_path):
    t0 = time.monotonic()
    res = run(cmd, standin_env(tmp_path))
    assert res.returncode == 2 and "error" in res.stderr, res.stderr
    assert time.monotonic() - t0 < 5
    assert "--bogus-flag" in res.stderr or "bogus" not in " ".join(cmd)


# --- engines: start-up failures ---------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("problem", ["missing", "no-config"])
def test_bad_model_path_exits_1_fast(engine, problem, tmp_path):
    model = tmp_path / "model"
    if problem == "no-config":
        model.mkdir()
        (model / "tokenizer.json").write_text("{}")
    port = free_port()
    cmd = (["text-generation-launcher", "--model-id", str(model), "--port", str(port)] if engine == "tgi"
           else ["vllm", "serve", str(model), "--port", str(port)])
    t0 = time.monotonic()
    res = run(cmd, standin_env(tmp_path))
    elapsed = time.monotonic() - t0
    assert res.returncode == 1 and "config.json" in res.stderr and str(model) in res.stderr, res.stderr
    assert elapsed < 3, elapsed
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_a_taken_port_fails(engine, tiny_model, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        # TGI reads HOSTNAME (a login profile's) and falls back to 0.0.0.0: the port is taken there too.
        cmd = (["text-generation-launcher", "--model-id", str(tiny_model), "--port", port,
                "--prometheus-port", str(free_port())] if engine == "tgi"
               else ["vllm", "serve", str(tiny_model), "--host", "127.0.0.1", "--port", port])
        t0 = time.monotonic()
        res = run(cmd, standin_env(tmp_path, HOSTNAME="login-node"))
    assert res.returncode == 1 and "Address already in use" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert time.monotonic() - t0 < 3  # the port is bound before the model loads


def test_engines_check_context_settings(tiny_model, tmp_path):
    env = standin_env(tmp_path)
    res = run(["vllm", "serve", str(tiny_model), "--max-model-len", "4096"], env)
    assert res.returncode == 1 and "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in res.stderr, res.stderr
    res = run(["vllm", "serve", str(tiny_model), "-tp", "3"], env)
    assert res.returncode == 1 and "must be divisible by tensor parallel size (3)" in res.stderr, res.stderr
    res = run(["text-generation-launcher", "--model-id", str(tiny_model), "--max-input-tokens", "600",
               "--max-total-tokens", "512"], env)
    assert res.returncode == 1 and "ArgumentValidation" in res.stderr, res.stderr


# --- the container runtime stand-in ---------------------------------------------------------------------

@pytest.fixture
def image(tmp_path) -> Path:
    return stand_in_image(tmp_path / "tool.sif", "echo run:$*", "    export IMAGE_VAR=from-image\n    export PORT=80")


def test_runtime_versions(tmp_path):
    env = standin_env(tmp_path)
    assert run(["singularity", "--version"], env).stdout.strip() == "singularity-ce version 4.3.1"
    assert run(["apptainer", "--version"], env).stdout.strip() == "apptainer version 1.4.0"


def test_runtime_translates_env_prefixes_and_logs_only_names(tmp_path, image):
    log = tmp_path / "calls.jsonl"
    env = standin_env(tmp_path, KIT_STANDIN_LOG=str(log), SINGULARITYENV_SECRET="s-value-1",
                      APPTAINERENV_SECRET="a-value-2", APPTAINERENV_ONLY_A="a-only", PORT="1234",
                      HOST_ONLY="host")
    show = ["bash", "-c", 'echo "$SECRET|${ONLY_A-unset}|$PORT|$IMAGE_VAR|$HOST_ONLY|${SINGULARITYENV_SECRET-gone}"']
    res = run(["singularity", "exec", "--nv", str(image), *show], env)
    assert res.returncode == 0 and res.stdout.strip() == "s-value-1|unset|80|from-image|host|gone", res
    res = run(["apptainer", "exec", "--env", "PORT=9999", str(image), *show], env)
    assert res.returncode == 0 and res.stdout.strip() == "a-value-2|a-only|9999|from-image|host|gone", res
    legacy_only = {k: v for k, v in env.items() if k != "APPTAINERENV_SECRET"}
    res = run(["apptainer", "exec", str(image), *show], legacy_only)
    assert res.stdout.strip() == "s-value-1|a-only|80|from-image|host|gone"
    assert "DEPRECATED USAGE: Environment variable SINGULARITYENV_SECRET" in res.stderr
    res = run(["singularity", "exec", "--cleanenv", str(image), *show], env)
    assert res.stdout.strip() == "s-value-1|unset|80|from-image||gone"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0]["argv"][:4] == ["singularity", "exec", "--nv", str(image)]
    assert calls[0]["cwd"] == os.getcwd()
    assert calls[0]["env_keys"] == ["APPTAINERENV_ONLY_A", "APPTAINERENV_SECRET", "SINGULARITYENV_SECRET"]
    assert "value" not in log.read_text()


def test_runtime_run_binds_and_paths(tmp_path, image):
    data = tmp_path / "host-data"
    data.mkdir()
    env = standin_env(tmp_path, SINGULARITYENV_WHERE="/data/sub")
    res = run(["singularity", "run", "-B", f"{data}:/data", str(image), "a", "/data/f", "--x=/data"], env)
    assert res.returncode == 0 and res.stdout.strip() == f"run:a {data}/f --x={data}", res
    res = run(["singularity", "exec", "--bind", f"{data}:/data:ro", str(image), "bash", "-c", 'echo "$WHERE|$PWD"'],
              env, cwd=str(tmp_path))
    assert res.stdout.strip() == f"{data}/sub|{tmp_path}"


@pytest.mark.parametrize("args, message", [
    (["exec", "{missing}", "true"], "no such file or directory"),
    (["exec", "--bind", "/no/such/dir:/data", "{image}", "true"], "mount source /no/such/dir doesn't exist"),
    (["exec", "--bogus", "{image}", "true"], "unknown flag: --bogus"),
    (["exec", "{notimage}", "true"], "image format not recognized"),
    (["exec", "{image}", "no-such-command-xyz"], "executable file not found"),
])
def test_runtime_failures(tmp_path, image, args, message):
    notimage = tmp_path / "plain.txt"
    notimage.write_text("hello\n")
    args = [a.format(missing=tmp_path / "missing.sif", image=image, notimage=notimage) for a in args]
    res = run(["singularity", *args], standin_env(tmp_path))
    assert res.returncode == 255 and message in res.stderr, res.stderr


# --- the container runtime stand-in: image commands (build, pull, push, inspect) -------------------------

DEF = """# rendered by kit
Bootstrap: docker
From: ghcr.io/huggingface/text-generation-inference:3.3.7

%labels
    kit.engine tgi
    kit.version 0.1.0

%environment
    export HF_HOME=/data/hf

%runscript
    echo "run:$HF_HOME:$*"

%test
    text-generation-launcher --version

%help
    TGI for kit.
"""


@pytest.fixture
def images(tmp_path):
    """A def file, a registry directory, cache and tmp dirs, and the stand-in's environment for them."""
    class Images:
        pass

    i = Images()
    i.dir = tmp_path
    i.deffile = tmp_path / "tgi.def"
    i.deffile.write_text(DEF)
    i.registry, i.cache, i.tmp = tmp_path / "registry", tmp_path / "cache", tmp_path / "tmp"
    i.tmp.mkdir()
    i.log = tmp_path / "calls.jsonl"
    i.env = standin_env(tmp_path, KIT_STANDIN_LOG=str(i.log), KIT_STANDIN_ORAS_ROOT=str(i.registry),
                        SINGULARITY_CACHEDIR=str(i.cache), SINGULARITY_TMPDIR=str(i.tmp))
    return i


def test_runtime_build_is_deterministic_and_runs(images):
    out = images.dir / "tgi.sif"
    res = run(["singularity", "build", "--fakeroot", str(out), str(images.deffile)], images.env)
    assert res.returncode == 0, res.stderr
    assert res.stderr.endswith(f"INFO:    Build complete: {out}\n")
    assert out.read_text() == "#!kit-standin image\n" + DEF
    # Same def, same bytes (also through apptainer, with --force over an existing file).
    again = images.dir / "again.sif"
    again.write_text("old")
    res = run(["apptainer", "build", "--force", "--notest", "--fakeroot", str(again), str(images.deffile)], images.env)
    assert res.returncode == 0 and again.read_bytes() == out.read_bytes(), res.stderr
    assert (images.cache / "kit-standin-cache.log").read_text().count("build ") == 2
    assert (images.tmp / "kit-standin-tmp.log").read_text().count("build ") == 2
    # The built image runs: %runscript with "$@", %environment as the image's ENV.
    res = run(["singularity", "run", str(out), "a", "b"], images.env)
    assert res.returncode == 0 and res.stdout == "run:/data/hf:a b\n", res.stderr
    calls = [json.loads(line) for line in images.log.read_text().splitlines()]
    assert calls[0]["argv"] == ["singularity", "build", "--fakeroot", str(out), str(images.deffile)]


@pytest.mark.parametrize("case, message", [
    ("missing-def", "unable to open file"),
    ("no-bootstrap", "the first keyword must be 'Bootstrap:'"),
    ("exists", "already exists. Use --force if you want to overwrite it"),
    ("no-fakeroot", "could not use fakeroot: no mapping entry found in /etc/subuid for "),
    ("bad-flag", "unknown flag: --bogus"),
    ("no-tmpdir", "stat /no/such/tmp: no such file or directory"),
])
def test_runtime_build_failures(images, case, message):
    out, deffile, env, extra = images.dir / "out.sif", images.deffile, images.env, []
    if case == "missing-def":
        deffile = images.dir / "missing.def"
    elif case == "no-bootstrap":
        deffile.write_text("From: ubuntu:24.04\nBootstrap: docker\n")
    elif case == "exists":
        out.write_text("previous image")
    elif case == "no-fakeroot":
        env = dict(env, KIT_STANDIN_NO_FAKEROOT="1")
    elif case == "bad-flag":
        extra = ["--bogus"]
    elif case == "no-tmpdir":
        env = dict(env, SINGULARITY_TMPDIR="/no/such/tmp")
    res = run(["singularity", "build", "--fakeroot", *extra, str(out), str(deffile)], env)
    assert res.returncode == 255 and message in res.stderr, res.stderr
    assert out.read_text() == "previous image" if case == "exists" else not out.exists()


def test_runtime_push_pull_and_inspect(images):
    sif = images.dir / "tgi.sif"
    assert run(["singularity", "build", "--fakeroot", str(sif), str(images.deffile)], images.env).returncode == 0
    res = run(["singularity", "push", str(sif), "oras://registry.example:5000/kit/tgi:1.0"], images.env)
    assert res.returncode == 0 and res.stderr.strip().endswith("INFO:    Upload complete"), res.stderr
    stored = images.registry / "registry.example:5000" / "kit" / "tgi" / "1.0.sif"
    assert stored.read_bytes() == sif.read_bytes()
    # pull: --name (spython's and kit's form), a positional OUT; an existing file needs --force.
    pulled = images.dir / "pulled"
    pulled.mkdir()
    for args in (["--name", str(pulled / "a.sif"), "oras://registry.example:5000/kit/tgi:1.0"],
                 [str(pulled / "b.sif"), "oras://registry.example:5000/kit/tgi:1.0"],
                 ["--force", "--name", str(pulled / "a.sif"), "oras://registry.example:5000/kit/tgi:1.0"]):
        res = run(["singularity", "pull", *args], images.env)
        assert res.returncode == 0, res.stderr
    assert all((pulled / f"{n}.sif").read_bytes() == sif.read_bytes() for n in "ab")
    res = run(["singularity", "pull", "--name", str(pulled / "a.sif"), "oras://registry.example:5000/kit/tgi:1.0"],
              images.env)
    assert res.returncode == 255 and "Image file already exists" in res.stderr
    # inspect: the real JSON shape, the sections from the def.
    res = run(["singularity", "inspect", "-e", "-d", "-l", "-r", "-H", "-t", "--json", str(pulled / "a.sif")],
              images.env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["type"] == "container" and list(out) == ["data", "type"] and list(out["data"]) == ["attributes"]
    attrs = out["data"]["attributes"]
    assert attrs["labels"] == {"kit.engine": "tgi", "kit.version": "0.1.0"}
    assert attrs["deffile"] == DEF and attrs["runscript"] == '#!/bin/sh\n\n    echo "run:$HF_HOME:$*"'
    assert attrs["test"] == "#!/bin/sh\n\n    text-generation-launcher --version"
    assert attrs["helpfile"] == "    TGI for kit."
    assert attrs["environment"] == {"/.singularity.d/env/90-environment.sh": "#!/bin/sh\n\n    export HF_HOME=/data/hf"}
    res = run(["apptainer", "inspect", str(sif)], images.env)  # default: labels as text
    assert res.stdout == "kit.engine: tgi\nkit.version: 0.1.0\n"
    assert "kit-standin-cache.log" in os.listdir(images.cache)


@pytest.mark.parametrize("args, message", [
    (["pull", "--name", "{d}/x.sif", "oras://registry.example/kit/none:1"], "manifest unknown"),
    (["push", "{d}/tgi.sif", "oras://registry.example/kit/tgi"], "a tag is needed"),
    (["push", "{d}/missing.sif", "oras://registry.example/kit/tgi:1"], "no such file or directory"),
    (["push", "{d}/tgi.def", "oras://registry.example/kit/tgi:1"], "image format not recognized"),
    (["inspect", "{d}/tgi.def"], "image format not recognized"),
    (["inspect", "{d}/missing.sif"], "no such file or directory"),
])
def test_runtime_image_command_failures(images, args, message):
    (images.dir / "tgi.sif").write_text("#!kit-standin image\n{}\n")
    res = run(["singularity", *[a.format(d=images.dir) for a in args]], images.env)
    assert res.returncode == 255 and res.stderr.startswith("FATAL:   ") and message in res.stderr, res.stderr
    assert not (images.dir / "x.sif").exists() and not (images.registry / "registry.example").exists()


def test_runtime_pull_failure_injection(images):
    artifact = images.registry / "registry.example" / "kit" / "tgi" / "1.0.sif"
    artifact.parent.mkdir(parents=True)
    data = b"#!kit-standin image\n{}\n" + bytes(range(256)) * 8
    artifact.write_bytes(data)
    dest = images.dir / "x.sif"
    cmd = ["singularity", "pull", "--name", str(dest), "oras://registry.example/kit/tgi:1.0"]
    res = run(cmd, dict(images.env, KIT_STANDIN_PULL_FAIL_AFTER="100"))
    assert res.returncode == 255 and "connection reset by peer" in res.stderr, res.stderr
    assert dest.read_bytes() == data[:100]  # the partial file is left behind: kit must clean up
    dest.unlink()
    res = run(cmd, dict(images.env, KIT_STANDIN_PULL_CORRUPT="1"))
    got = dest.read_bytes()
    assert res.returncode == 0 and len(got) == len(data), res.stderr
    assert [i for i in range(len(data)) if got[i] != data[i]] == [len(data) - 1]
    assert hashlib.sha256(got).hexdigest() != hashlib.sha256(data).hexdigest()


def test_spython_client_drives_the_stand_in(images, monkeypatch, capsys):
    """spython 0.3.14's argv, return values and (lack of) failure reporting, as kit will meet them."""
    from spython.main import Client

    for k, v in images.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KIT_STANDIN_PYTHON", sys.executable)
    out = str(images.dir / "tgi.sif")
    assert Client.version() == "singularity-ce version 4.3.1"
    assert Client.build(recipe=str(images.deffile), image=out, sudo=False, options=["--fakeroot"]) == out
    assert Client.inspect(out)["attributes"]["labels"]["kit.engine"] == "tgi"
    assert Client.pull("oras://host/ns/img:tag", name="x.sif", pull_folder=str(images.dir)) == \
        str(images.dir / "x.sif")  # returned although the pull failed (manifest unknown) ...
    assert not (images.dir / "x.sif").exists()  # ... so kit must check the file itself
    # A failing build returns the path whenever a file is there (here: the image of the first build).
    assert Client.build(recipe=str(images.deffile), image=out, sudo=False, options=["--fakeroot"]) == out
    assert Client.build(recipe=str(images.dir / "no.def"), image=str(images.dir / "n.sif"), sudo=False) is None
    failed = Client.inspect(str(images.deffile))  # no exception: the result dict of the failed command
    assert failed["return_code"] == 255 and "image format not recognized" in failed["message"][0]
    printed = capsys.readouterr().out
    # spython echoes the command and the runtime's stderr (twice) on stdout.
    assert printed.count("already exists. Use --force") == 2 and "manifest unknown" in printed
    calls = [json.loads(line)["argv"] for line in images.log.read_text().splitlines()]
    assert [c for c in calls if c[1] != "--version"] == [
        ["singularity", "build", "--fakeroot", out, str(images.deffile)],
        ["singularity", "inspect", "-e", "-d", "-l", "-r", "-H", "-t", "--json", out],
        ["singularity", "pull", "--name", str(images.dir / "x.sif"), "oras://host/ns/img:tag"],
        ["singularity", "build", "--fakeroot", out, str(images.deffile)],
        ["singularity", "build", str(images.dir / "n.sif"), str(images.dir / "no.def")],
        ["singularity", "inspect", "-e", "-d", "-l", "-r", "-H", "-t", "--json", str(images.deffile)],
    ]
    assert calls.count(["singularity", "--version"]) == 7  # version() and every command's check_install()


# --- Weaviate (the RAG stack's vector database) --------------------------------------------------------

WEAVIATE_KEY = "weaviate-key-789"


def weaviate_env(base: Path, node: str = "kit-rag-node", **overrides) -> dict:
    """What kit's stack job gives Weaviate (SINGULARITYENV_*), with fresh ports; None drops a variable."""
    rpc = free_port()
    settings = {"PERSISTENCE_DATA_PATH": "/var/lib/weaviate", "CLUSTER_HOSTNAME": node, "RAFT_JOIN": f"{node}:{rpc}",
                "RAFT_BOOTSTRAP_EXPECT": "1", "GRPC_PORT": free_port(), "CLUSTER_GOSSIP_BIND_PORT": free_port(),
                "CLUSTER_DATA_BIND_PORT": free_port(), "RAFT_PORT": free_port(), "RAFT_INTERNAL_RPC_PORT": rpc,
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false", "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": WEAVIATE_KEY, "AUTHENTICATION_APIKEY_USERS": "kit",
                "DISABLE_TELEMETRY": "true", "GO_PROFILING_DISABLE": "true", "CLUSTER_BIND_ADDR": "127.0.0.1",
                "CLUSTER_BASIC_AUTH_USERNAME": "kit", "CLUSTER_BASIC_AUTH_PASSWORD": "pw"}
    settings.update(overrides)
    return standin_env(base, **{f"SINGULARITYENV_{k}": str(v) for k, v in settings.items() if v is not None})


def start_weaviate(base: Path, env: dict, data: Path | None, port: int) -> subprocess.Popen:
    image = stand_in_image(base / "weaviate.sif", 'exec weaviate "$@"')
    binds = ["--bind", f"{data}:/var/lib/weaviate"] if data else []
    return subprocess.Popen(["singularity", "run", "--cleanenv", "--containall", *binds, str(image), "--host", "127.0.0.1",
                             "--port", str(port), "--scheme", "http"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("overrides, data, message", [
    ({"CLUSTER_HOSTNAME": None}, True, "CLUSTER_HOSTNAME is not set"),
    ({"RAFT_JOIN": "other-node"}, True, "RAFT_JOIN='other-node': a one-node cluster joins itself"),
    ({"RAFT_BOOTSTRAP_EXPECT": "3"}, True, "RAFT_BOOTSTRAP_EXPECT='3'"),
    ({"GRPC_PORT": None}, True, "GRPC_PORT is not set"),
    ({"CLUSTER_BIND_ADDR": None}, True, "CLUSTER_BIND_ADDR=0.0.0.0"),
    ({"AUTHENTICATION_APIKEY_ALLOWED_KEYS": None}, True, "need at least one valid allowed key"),
    ({}, False, "mkdir /var/lib/weaviate/raft: read-only file system"),  # the data directory was not bound
])
def test_weaviate_refuses_what_a_slurm_job_cannot_run_with(tmp_path, overrides, data, message):
    folder = tmp_path / "data"
    folder.mkdir()
    proc = start_weaviate(tmp_path, weaviate_env(tmp_path, **overrides), folder if data else None, free_port())
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and message in out, out


def test_weaviate_keys_readiness_and_raft_state_per_node(tmp_path):
    """Its 401s (no key, a wrong key), the routes open without a key, a taken port, and data whose Raft
    state belongs to another node name: never ready."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    env = weaviate_env(tmp_path)
    proc = start_weaviate(tmp_path, env, data, port)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http("GET", url + "/v1/.well-known/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, body = http("GET", url + "/v1/meta")
        assert status == 401 and b"anonymous access not enabled" in body
        status, body = http("GET", url + "/v1/meta", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and b"invalid api key" in body
        status, body = http("GET", url + "/v1/meta", headers={"Authorization": f"Bearer {WEAVIATE_KEY}"})
        assert status == 200 and json.loads(body)["hostname"] == url
        assert http("GET", url + "/v1")[0] == 200 and http("GET", url + "/v1/schema")[0] == 401
        assert http("GET", url + "/v1/no-such-route")[0] == 404
        taken = start_weaviate(tmp_path, dict(env), data, free_port())  # the same gRPC and Raft ports
        out, _ = taken.communicate(timeout=30)
        assert taken.returncode == 1 and "bind: address already in use" in out, out
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (data / "raft" / "kit-standin-node").read_text().strip() == "kit-rag-node"
    port = free_port()
    proc = start_weaviate(tmp_path, weaviate_env(tmp_path, node="another-node"), data, port)
    try:
        time.sleep(3)
        assert http("GET", f"http://127.0.0.1:{port}/v1/.well-known/ready", timeout=5)[0] == 503
        assert http("GET", f"http://127.0.0.1:{port}/v1/.well-known/live", timeout=5)[0] == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "belongs to node kit-rag-node, not another-node" in out


def test_tei_flags_take_an_optional_value():
    assert flags.parse("tei", ["--model-id", "/m", "--auto-truncate"], {})[0]["--auto-truncate"] is True
    assert flags.parse("tei", ["--model-id", "/m", "--auto-truncate=false"], {})[0]["--auto-truncate"] is False
    args = flags.parse("tei", ["--model-id", "/m"], {"API_KEY": "k", "PORT": "80"})[0]
    assert args["--api-key"] == "k" and args["--port"] == "80"
    with pytest.raises(SystemExit):
        flags.parse("tei", ["--model-id", "/m", "--no-such-flag"], {})


# --- last: logs and SIGTERM -----------------------------------------------------------------------------

def test_zz_sigterm_stops_engines_and_logs_hold_no_keys(engines):
    e = engines
    for proc in (e.tgi, e.vllm):
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # the runtime's PID is the engine's (exec all the way)
    for proc in (e.tgi, e.vllm):
        assert proc.wait(timeout=10) == 0
    tgi_log, vllm_log = e.tgi_err.read_text(), e.vllm_err.read_text()
    assert "signal received" in tgi_log and "signal received" in vllm_log
    assert '"POST /v1/chat/completions" 401' in vllm_log
    # Like the real launcher, the stand-in TGI prints its Args line with the key in clear (kit's
    # job script filters it out of the log); every other line, and vLLM's log, never holds it.
    args_lines = [line for line in tgi_log.splitlines() if line.startswith("Args {")]
    assert len(args_lines) == 1 and f"'--api-key': '{TGI_KEY}'" in args_lines[0]
    tgi_rest = "\n".join(line for line in tgi_log.splitlines() if not line.startswith("Args {"))
    for text in (tgi_rest, vllm_log, e.log.read_text()):
        assert TGI_KEY not in text and VLLM_KEY not in text and "Bearer" not in text
        assert TGI_KEY.lower() not in text.lower()

