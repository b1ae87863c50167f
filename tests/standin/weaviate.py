"""Stand-in for Weaviate's server (`/bin/weaviate --host H --port P --scheme http`), as kit's RAG stack
job runs it from the weaviate image.

Real: the command-line flags (go-flags: an unknown one exits 1); the environment it configures itself
from (usecases/config/environment.go) and its API-key config check (apikey/client.go); the listeners it
opens: HTTP, gRPC, gossip, cluster data, Raft and Raft's RPC (gossip and Raft on CLUSTER_BIND_ADDR), pprof
on 6060 unless GO_PROFILING_DISABLE and metrics on 2112 when PROMETHEUS_MONITORING_ENABLED, a taken port
failing the start; the REST route table (tests/engine_routes.yaml) behind API-key auth with Weaviate's
two 401s; /v1/.well-known/live, /ready and /v1/meta; and Raft state under PERSISTENCE_DATA_PATH kept
per node name: a restart under another CLUSTER_HOSTNAME never gets ready (503), like Weaviate's join
loop on a restarted job (research notes containers.md §4.2). Not modelled: gRPC itself (it listens,
answers nothing) and the data, so weaviate-client cannot query it.

Stricter than Weaviate, on what a Slurm job must set (each missing one exits 1 naming it): a fixed
CLUSTER_HOSTNAME, RAFT_JOIN naming that node and its Raft RPC port, RAFT_BOOTSTRAP_EXPECT=1,
PERSISTENCE_DATA_PATH on a writable bind (not the read-only image), every port, telemetry off, and the
cluster listeners on loopback with a password on the data API. KIT_STANDIN_EXIT_DIR/weaviate appearing
makes it exit 1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sys
import time

from standin import httpd, routes
from standin.engine import Engine
from standin.httpd import HTTPError

IMAGE_DIRS = ("/var/lib/weaviate",)  # in the image (read-only): a path still here was not bound
VALUED = {"--host", "--port", "--scheme", "--socket-path", "--cleanup-timeout", "--graceful-timeout",
          "--max-header-size", "--listen-limit", "--keep-alive", "--read-timeout", "--write-timeout",
          "--tls-host", "--tls-port", "--tls-certificate", "--tls-key", "--tls-ca", "--tls-listen-limit",
          "--tls-keep-alive", "--tls-read-timeout", "--tls-write-timeout", "--config-file"}  # rest/server.go
OPEN = ("/v1/.well-known/live", "/v1/.well-known/ready")  # answered before any check
ANONYMOUS_SKIPPED = ("/v1", "/v1/.well-known/openid-configuration")
TRUE = ("on", "enabled", "1", "true")


def log(level: str, msg: str, **fields) -> None:
    httpd.log(json.dumps({"action": "startup", "level": level, "msg": msg, **fields,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def fatal(msg: str) -> None:
    log("fatal", msg)
    sys.exit(1)


def parse(argv: list[str]) -> dict:
    opts, i = {}, 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("-h", "--help"):
            print("Usage:\n  weaviate [OPTIONS]\n\nApplication Options:\n" + "\n".join(f"  {f}" for f in sorted(VALUED)))
            sys.exit(0)
        if name not in VALUED:
            sys.stderr.write(f"unknown flag `{name.lstrip('-')}'\n")
            sys.exit(1)
        if not eq:
            i += 1
            if i >= len(argv):
                sys.stderr.write(f"expected argument for flag `{name}'\n")
                sys.exit(1)
            value = argv[i]
        opts[name] = value
        i += 1
    return opts


def enabled(env, name: str) -> bool:
    return (env.get(name) or "").lower() in TRUE


def port(env, name: str) -> int:
    if not env.get(name):
        fatal(f"stand-in: {name} is not set: on a node shared with other jobs every port must be the job's own")
    try:
        return int(env[name])
    except ValueError:
        fatal(f"parse {name} as int: invalid syntax")


def config(env) -> dict:
    """What Weaviate reads from its environment, and the checks above; exits 1 at the first problem."""
    cfg = {"anonymous": enabled(env, "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"),
           "apikey": enabled(env, "AUTHENTICATION_APIKEY_ENABLED")}
    keys = [k for k in (env.get("AUTHENTICATION_APIKEY_ALLOWED_KEYS") or "").split(",")]
    users = [u for u in (env.get("AUTHENTICATION_APIKEY_USERS") or "").split(",")]
    if cfg["apikey"]:
        if keys == [""]:
            fatal("invalid apikey config: need at least one valid allowed key")
        if any(not k for k in keys):
            fatal("invalid apikey config: keys cannot have length 0")
        if len(set(keys)) != len(keys):
            fatal("invalid apikey config: keys must be unique")
        if users == [""]:
            fatal("invalid apikey config: need at least one user")
        if len(users) > 1 and len(users) != len(keys):
            fatal("invalid apikey config: length of users and keys must match, alternatively provide single user "
                  "for all keys")
    elif not cfg["anonymous"]:
        fatal("invalid config: no authentication scheme configured, you must select at least one")
    cfg["keys"] = [hashlib.sha256(k.encode()).digest() for k in keys if cfg["apikey"]]

    node = env.get("CLUSTER_HOSTNAME")
    if not node:
        fatal(f"stand-in: CLUSTER_HOSTNAME is not set: Raft state would be kept under this machine's name "
              f"({socket.gethostname()}), which a job restarted on another node cannot rejoin")
    cfg["node"] = node
    cfg["ports"] = {name: port(env, name) for name in ("GRPC_PORT", "CLUSTER_GOSSIP_BIND_PORT", "CLUSTER_DATA_BIND_PORT",
                                                       "RAFT_PORT", "RAFT_INTERNAL_RPC_PORT")}
    join = [j for j in (env.get("RAFT_JOIN") or "").split(",") if j]
    rpc = cfg["ports"]["RAFT_INTERNAL_RPC_PORT"]
    if join not in ([node], [f"{node}:{rpc}"]):
        fatal(f"stand-in: RAFT_JOIN={env.get('RAFT_JOIN', '')!r}: a one-node cluster joins itself, {node}:{rpc}")
    if env.get("RAFT_BOOTSTRAP_EXPECT") != "1":
        fatal(f"stand-in: RAFT_BOOTSTRAP_EXPECT={env.get('RAFT_BOOTSTRAP_EXPECT', '')!r}: one node expects 1")
    if not enabled(env, "DISABLE_TELEMETRY"):
        fatal("stand-in: DISABLE_TELEMETRY is not true: a cluster job must not phone home")
    cfg["bind"] = env.get("CLUSTER_BIND_ADDR") or "0.0.0.0"
    if cfg["bind"] not in ("127.0.0.1", "::1"):
        fatal(f"stand-in: CLUSTER_BIND_ADDR={cfg['bind']}: gossip and Raft (unauthenticated) would listen on "
              f"the cluster network")
    if not (env.get("CLUSTER_BASIC_AUTH_USERNAME") and env.get("CLUSTER_BASIC_AUTH_PASSWORD")):
        fatal("stand-in: CLUSTER_BASIC_AUTH_USERNAME/PASSWORD not set: the cluster data API listens on every "
              "address without a password")
    cfg["profiling"] = None if enabled(env, "GO_PROFILING_DISABLE") else int(env.get("GO_PROFILING_PORT") or 6060)
    cfg["metrics"] = int(env.get("PROMETHEUS_MONITORING_PORT") or 2112) \
        if enabled(env, "PROMETHEUS_MONITORING_ENABLED") else None

    data = env.get("PERSISTENCE_DATA_PATH") or "./data"
    if data.startswith(IMAGE_DIRS):
        fatal(f"mkdir {data}/raft: read-only file system (PERSISTENCE_DATA_PATH is inside the image: bind a "
              f"writable directory there)")
    try:
        os.makedirs(os.path.join(data, "raft"), exist_ok=True)
        probe = os.path.join(data, ".kit-standin-probe")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        fatal(f"open {data}: {exc.strerror}")
    cfg["data"] = data
    return cfg


def listen(host: str, number: int, what: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.bind((host, number))
    except OSError as exc:
        s.close()
        fatal(f"{what}: listen tcp {host}:{number}: bind: {exc.strerror.lower()}")
    s.listen(8)
    return s


class Weaviate(Engine):
    name = "weaviate"
    head = True  # its table has HEAD routes (object and tenant existence)

    def __init__(self, cfg: dict, host: str, http_port: int):
        super().__init__(None, 0)
        self.cfg, self.ready = cfg, True
        self.meta = {"hostname": f"http://{host}:{http_port}", "version": routes.spec("weaviate")["version"],
                     "modules": {}, "grpcMaxMessageSize": 104858000}
        self.handlers = {
            ("GET", "/v1/.well-known/live"): lambda body: (200, None),
            ("GET", "/v1/.well-known/ready"): lambda body: (200 if self.ready else 503, None),
            ("GET", "/v1/.well-known/openid-configuration"): lambda body: (404, None),
            ("GET", "/v1"): lambda body: (200, {"links": [{"name": "meta", "href": "/v1/meta"}]}),
            ("GET", "/v1/meta"): lambda body: (200, self.meta),
        }

    def authorize(self, method, path, header):
        route, same_path = routes.find(self.name, method, path)
        if path in OPEN or (route is None and not same_path):  # readiness, or 404 before any check
            return
        token = header[len("Bearer "):] if header and header.startswith("Bearer ") else ""
        if not token:
            if self.cfg["anonymous"] or path in ANONYMOUS_SKIPPED:
                return
            raise HTTPError(401, {"code": 401, "message": "anonymous access not enabled. Please authenticate "
                                                          "through one of the available methods: [API-keys]"})
        digest = hashlib.sha256(token.encode()).digest()
        if not any(hmac.compare_digest(digest, k) for k in self.cfg["keys"]):
            raise HTTPError(401, {"code": 401, "message": "unauthorized: invalid api key"})

    def error(self, message):
        return HTTPError(422, {"error": [{"message": message}]})


def raft_state(cfg: dict, engine: Weaviate) -> None:
    """Raft state is the node's: a data directory written under another node name never gets ready."""
    mark = os.path.join(cfg["data"], "raft", "kit-standin-node")
    try:
        with open(mark) as f:
            owner = f.read().strip()
    except FileNotFoundError:
        with open(mark, "w") as f:
            f.write(cfg["node"] + "\n")
        return
    if owner != cfg["node"]:
        engine.ready = False
        log("warning", f"raft: this data's Raft state belongs to node {owner}, not {cfg['node']}: waiting to join "
                       f"a cluster that will never answer", action="raft_join")


def main(argv: list[str]) -> None:
    opts = parse(argv)
    host = opts.get("--host", "localhost")
    if opts.get("--scheme", "http") != "http":
        fatal(f"stand-in: --scheme {opts['--scheme']}: only http")
    try:
        http_port = int(opts.get("--port", "8080"))
    except ValueError:
        sys.stderr.write(f"invalid argument for flag `--port' (expected int): {opts['--port']}\n")
        sys.exit(1)
    cfg = config(os.environ)
    server = httpd.bind(host, http_port)
    p = cfg["ports"]
    listeners = [listen("0.0.0.0", p["GRPC_PORT"], "grpc"),
                 listen(cfg["bind"], p["CLUSTER_GOSSIP_BIND_PORT"], "memberlist"),
                 listen("0.0.0.0", p["CLUSTER_DATA_BIND_PORT"], "cluster api"),
                 listen(cfg["bind"], p["RAFT_PORT"], "raft"),
                 listen(cfg["bind"], p["RAFT_INTERNAL_RPC_PORT"], "raft rpc")]
    listeners += [listen("0.0.0.0", n, what) for n, what in ((cfg["profiling"], "pprof"), (cfg["metrics"], "metrics"))
                  if n]
    engine = Weaviate(cfg, host, http_port)
    raft_state(cfg, engine)
    httpd.exit_when_asked("weaviate")
    log("info", "configured versions", server_version=engine.meta["version"], node=cfg["node"])
    httpd.serve([server], engine)
