"""Stand-in for the container runtimes `singularity` (SingularityCE 4.3) and `apptainer` (1.4).

Called by tests/standin/bin/singularity (and its `apptainer` symlink) as
    python runtime.py --as NAME <the runtime's own arguments>

It runs the command on the host instead of in a container, after doing what the real runtime
does to the command line and the environment, for the subset kit uses:

- `--version` / `version`; `exec [opts] IMAGE CMD ARGS...`; `run [opts] IMAGE ARGS...`.
- Options accepted and skipped: --nv --nvccli --cleanenv/-e --containall/-C --contain/-c --no-home
  --writable-tmpfs --no-eval --compat --no-init --no-umask; with a value: --bind/-B SRC[:DST[:OPTS]]
  (repeatable, comma-separated lists too), --env K=V (repeatable, comma-separated like pflag),
  --pwd DIR, --home/-H DIR. Anything else starting with '-' before IMAGE is an unknown flag.
- IMAGE must be an existing stand-in image: a text file whose first line is
  `#!kit-standin runscript=<command...>` (the runscript is optional for `exec`). Further lines
  `env K=V` play the image's Docker ENV (it beats the host environment, as in Apptainer).
- Binds: every SRC must exist (else FATAL, exit 255, like the real runtime). Because the command runs
  on the host, container paths under a bind's DST are rewritten to the host SRC in the command's
  arguments, in the --pwd directory and in environment values set for the container.
- Environment: the host environment passes through (unless --cleanenv/--containall); then the
  image's ENV; then `<PREFIX>ENV_X=v` becomes `X=v` (SingularityCE: SINGULARITYENV_ only; Apptainer:
  APPTAINERENV_ and, with a deprecation warning, SINGULARITYENV_ when no APPTAINERENV_ twin is set);
  then `--env`. The `<PREFIX>ENV_*` variables themselves are removed. KIT_STANDIN_* always pass.
- It appends one JSON line per call to $KIT_STANDIN_LOG: {"argv", "cwd", "env_keys"}; env_keys
  lists the names of the SINGULARITYENV_*/APPTAINERENV_* variables, never their values.
- Finally it exec()s the command, so the runtime's PID becomes the command's PID and SIGTERM sent to
  it reaches the engine directly.

Which runtime it plays is its invoked name (`singularity` or `apptainer`); KIT_STANDIN_RUNTIME_FLAVOR
(`singularityce` or `apptainer`) overrides that, e.g. to play a site where `singularity` is
Apptainer's compatibility symlink.

Image commands (for `kit images`; spython's Client drives build/pull/inspect, kit calls push itself):

- `build [--fakeroot|-f] [--force|-F] [--notest|-T] [--tmpdir DIR] [--build-arg K=V] OUT.sif SPEC`
  (spython: `singularity build [--force] [options...] OUT.sif RECIPE`). SPEC is a definition file
  (its first non-comment line must be `Bootstrap: AGENT`) or a `docker://`/`oras://` URI (fetched like
  `pull`). The stand-in SIF is deterministic text:
      #!kit-standin image
      {"def_sha256": "<sha256 of the def text>", "from": "<From:>", "labels": {<%labels KEY VALUE>}}
      <the def text>
  so the same def always gives the same bytes. `{{ VAR }}` placeholders are filled in first: %arguments
  defaults, overridden by --build-arg-file, then --build-arg (the stored def is the filled-in text). An existing OUT
  without --force fails like the real non-interactive build. `run` on such an image runs its
  %runscript with /bin/sh; simple `export K=V` lines of %environment become the image's ENV.
- `pull [--force|-F] [--name NAME] [--dir DIR] [OUT.sif] URI` (spython: `pull --name DIR/NAME [--force]
  URI`), `push SIF oras://HOST/PATH:TAG`: the registry is the directory $KIT_STANDIN_ORAS_ROOT; the
  artifact for `oras://HOST/PATH:TAG` is `$KIT_STANDIN_ORAS_ROOT/HOST/PATH/TAG.sif`, for
  `docker://HOST/PATH:TAG` it is `$KIT_STANDIN_ORAS_ROOT/docker/HOST/PATH/TAG.sif` (docker refs are
  normalized: `ubuntu` is `docker.io/library/ubuntu:latest`). `...@sha256:HEX` pulls the artifact in
  that directory whose sha256 is HEX. A missing artifact is "manifest unknown" (exit 255); push needs
  a tag. Failure injection: KIT_STANDIN_PULL_FAIL_AFTER=N writes only the first N bytes of the
  destination, then fails (exit 255, "connection reset by peer"); KIT_STANDIN_PULL_CORRUPT=1 writes the
  artifact with its last byte flipped (xor 0x01) and exits 0.
- `inspect [-l -d -r -t -e -H -s --json --all --list-apps] IMAGE` prints what the real one prints
  (JSON: {"data": {"attributes": {"environment": {...}, "labels": {...}, "runscript", "test",
  "helpfile", "deffile"}}, "type": "container"}, tab-indented, empty parts left out), taken from the
  embedded def. Labels add the runtime's own `org.label-schema.*` labels (build-date from the file's
  mtime). Old-style `runscript=` stand-in images inspect too; anything else fails like the real one.
- build and pull note their use of the cache/tmp dirs: SINGULARITY_CACHEDIR / SINGULARITY_TMPDIR
  (Apptainer: APPTAINER_*, or the SINGULARITY_* ones with a deprecation warning) get a line appended
  to `kit-standin-cache.log` / `kit-standin-tmp.log` in them (the cache dir is created, the tmp dir
  must exist). KIT_STANDIN_NO_FAKEROOT=1 plays a site without fakeroot: `build --fakeroot` fails with
  "could not use fakeroot: no mapping entry found in /etc/subuid for USER" (exit 255).
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import sys
import tempfile

VERSIONS = {"singularityce": "singularity-ce version 4.3.1", "apptainer": "apptainer version 1.4.0"}
BIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")
FLAGS = {"--nv", "--nvccli", "--cleanenv", "-e", "--containall", "-C", "--contain", "-c", "--no-home",
         "--writable-tmpfs", "--no-eval", "--compat", "--no-init", "--no-umask", "--rocm", "--no-privs",
         "--ipc", "-i", "--pid", "-p", "--userns", "-u", "--fakeroot", "-f", "--writable", "-w"}
VALUED = {"--bind": "bind", "-B": "bind", "--env": "env", "--pwd": "pwd", "--home": "home", "-H": "home"}
GLOBAL_FLAGS = {"-q", "--quiet", "-s", "--silent", "-d", "--debug", "-v", "--verbose", "--nocolor"}
CLEAN_KEEP = ("HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL", "TZ")


def fatal(message: str, code: int = 255) -> None:
    sys.stderr.write(f"FATAL:   {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def warn(message: str) -> None:
    sys.stderr.write(f"WARNING: {message}\n")
    sys.stderr.flush()


def info(message: str) -> None:
    sys.stderr.write(f"INFO:    {message}\n")
    sys.stderr.flush()


def record(prog: str, args: list[str]) -> None:
    path = os.environ.get("KIT_STANDIN_LOG")
    if not path:
        return
    keys = sorted(k for k in os.environ if k.startswith(("SINGULARITYENV_", "APPTAINERENV_")))
    line = json.dumps({"argv": [prog, *args], "cwd": os.getcwd(), "env_keys": keys}) + "\n"
    try:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
    except OSError as exc:
        fatal(f"kit stand-in: cannot append to KIT_STANDIN_LOG={path}: {exc.strerror}")


def split_pflag_list(value: str) -> list[str]:
    """pflag's StringArray/StringToString read a flag value as one CSV record."""
    try:
        return next(csv.reader([value]))
    except (csv.Error, StopIteration):
        return [value]


def parse_options(args: list[str], cmd: str) -> tuple[dict, list[str]]:
    opts = {"flags": set(), "bind": [], "env": [], "pwd": None, "home": None}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name, eq, inline = a.partition("=")
        if a in FLAGS:
            opts["flags"].add(a)
            i += 1
            continue
        key = VALUED.get(name)
        if key is None and len(a) > 2 and a[:2] in ("-B", "-H") and not a.startswith("--"):
            key, inline, eq = VALUED[a[:2]], a[2:].lstrip("="), "="  # -Bsrc:dst / -B=src:dst
        if key is None:
            sys.stderr.write(f"Error: unknown flag: {name}\n\nUsage:\n  {cmd} [exec options...] <container> ...\n\n"
                             f"Run '{cmd} --help' for more detailed usage information.\n")
            sys.exit(255)
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(args):
                sys.stderr.write(f"Error: flag needs an argument: {name}\n")
                sys.exit(255)
            value = args[i + 1]
            i += 2
        if key in ("bind", "env"):
            opts[key].extend(v for v in split_pflag_list(value) if v != "")
        else:
            opts[key] = value
    return opts, args[i:]


def read_image(image: str) -> tuple[list[str] | None, list[tuple[str, str]]]:
    if image.startswith(("docker://", "library://", "oras://", "shub://", "http://", "https://")):
        fatal(f"could not open image {image}: the kit stand-in runtime only runs local stand-in images")
    if not os.path.lexists(image):
        full = os.path.abspath(image)
        fatal(f"could not open image {full}: failed to retrieve path for {image}: lstat {full}: "
              "no such file or directory")
    if os.path.isdir(image) or not os.path.isfile(image):
        fatal(f"could not open image {os.path.abspath(image)}: image format not recognized")
    try:
        with open(image, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        fatal(f"could not open image {os.path.abspath(image)}: {exc.strerror}")
    if not lines or not lines[0].startswith("#!kit-standin"):
        fatal(f"could not open image {os.path.abspath(image)}: image format not recognized")
    if lines[0] == IMAGE_MAGIC:
        return built_image(lines)
    runscript = None
    head = lines[0][len("#!kit-standin"):].strip()
    if head.startswith("runscript="):
        runscript = shlex.split(head[len("runscript="):])
    env = []
    for line in lines[1:]:
        line = line.strip()
        if line.startswith("env ") and "=" in line:
            k, _, v = line[4:].strip().partition("=")
            env.append((k.strip(), v))
    return runscript, env


def built_image(lines: list[str]) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """An image made by `build`: %runscript runs with /bin/sh (args in "$@"); `[export] K=V` lines of
    %environment (one shell word as the value) are its ENV."""
    _, sections = parse_def("\n".join(lines[2:]))
    script = section_text(sections, "runscript")
    runscript = ["/bin/sh", "-c", script, "/.singularity.d/runscript"] if script else None
    env = []
    for line in section_text(sections, "environment").splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].strip()
        k, eq, v = line.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            try:
                words = shlex.split(v)
            except ValueError:
                continue
            if len(words) <= 1:
                env.append((k, words[0] if words else ""))
    return runscript, env


def parse_binds(specs: list[str]) -> list[tuple[str, str, str]]:
    """(host src, container dst, options) for each bind; FATAL when a source is missing."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        src = parts[0]
        dst = parts[1] if len(parts) > 1 and parts[1] else src
        mode = parts[2] if len(parts) > 2 else "rw"
        if len(parts) == 2 and parts[1] in ("ro", "rw"):  # SRC:ro means SRC:SRC:ro
            dst, mode = src, parts[1]
        if not os.path.exists(src):
            fatal(f"container creation failed: mount hook function failure: mount {src}->{dst} error: "
                  f"while mounting {src}: mount source {src} doesn't exist")
        if not dst.startswith("/"):
            fatal(f"container creation failed: mount hook function failure: mount {src}->{dst} error: "
                  f"destination {dst} must be an absolute path")
        out.append((os.path.abspath(src), os.path.normpath(dst), mode))
    return out


class PathMap:
    """Rewrites container paths (under a bind's DST) to the host paths (the bind's SRC)."""

    def __init__(self, binds: list[tuple[str, str, str]]):
        self.pairs = sorted(((dst, src) for src, dst, _ in binds if dst != src),
                            key=lambda p: len(p[0]), reverse=True)

    def path(self, p: str) -> str:
        for dst, src in self.pairs:
            if p == dst:
                return src
            if p.startswith(dst.rstrip("/") + "/"):
                return src.rstrip("/") + p[len(dst.rstrip("/")):]
        return p

    def text(self, value: str) -> str:
        """Rewrite every path-looking piece: the whole value, and after '=', ',', ':' separators."""
        if not self.pairs:
            return value
        out, token, seps = [], "", "=,:"
        for ch in value:
            if ch in seps:
                out.append(self.path(token) if token.startswith("/") else token)
                out.append(ch)
                token = ""
            else:
                token += ch
        out.append(self.path(token) if token.startswith("/") else token)
        return "".join(out)


def build_env(flavor: str, opts: dict, image_env: list[tuple[str, str]], paths: PathMap, image: str) -> dict:
    host = dict(os.environ)
    clean = bool(opts["flags"] & {"--cleanenv", "-e", "--containall", "-C", "--compat"})
    if clean:
        env = {k: v for k, v in host.items() if k in CLEAN_KEEP or k.startswith("KIT_STANDIN_")}
    else:
        env = {k: v for k, v in host.items() if not k.startswith(("SINGULARITYENV_", "APPTAINERENV_"))}
    # The container's PATH: the stand-in "image" programs first, then the host's (for bash, python...).
    env["PATH"] = BIN_DIR + os.pathsep + host.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    for k, v in image_env:
        if k != "PATH":
            env[k] = paths.text(v)
    prefixes = ["SINGULARITYENV_"] if flavor == "singularityce" else ["APPTAINERENV_", "SINGULARITYENV_"]
    applied: set[str] = set()
    for prefix in prefixes:
        for k, v in host.items():
            if not k.startswith(prefix) or len(k) == len(prefix):
                continue
            name = k[len(prefix):]
            if name in applied:
                continue  # APPTAINERENV_X wins over SINGULARITYENV_X
            if flavor == "apptainer" and prefix == "SINGULARITYENV_":
                warn(f"DEPRECATED USAGE: Environment variable {k} will not be supported in the future, "
                     f"use APPTAINERENV_{name} instead")
            applied.add(name)
            if name == "PREPEND_PATH":
                env["PATH"] = v + os.pathsep + env["PATH"]
            elif name == "APPEND_PATH":
                env["PATH"] = env["PATH"] + os.pathsep + v
            else:
                env[name] = paths.text(v)
    for item in opts["env"]:
        k, eq, v = item.partition("=")
        if not eq or not k:
            fatal(f"could not parse --env value {k!r}: expected KEY=VALUE")
        env[k] = paths.text(v)
    # For the stand-in engine: how to show host paths as the container paths the caller gave.
    env["KIT_STANDIN_BINDS"] = json.dumps([[dst, src] for dst, src in paths.pairs])
    upper = "SINGULARITY" if flavor == "singularityce" else "APPTAINER"
    env[f"{upper}_CONTAINER"] = os.path.abspath(image)
    env[f"{upper}_NAME"] = os.path.basename(image)
    if opts["home"]:
        env["HOME"] = opts["home"].split(":")[0]  # --home SRC[:DST]: the command runs on the host
    return env


def env_binds(flavor: str) -> list[str]:
    names = (["SINGULARITY_BIND", "SINGULARITY_BINDPATH"] if flavor == "singularityce"
             else ["APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND", "SINGULARITY_BINDPATH"])
    out = []
    for n in names:
        if os.environ.get(n):
            if flavor == "apptainer" and n.startswith("SINGULARITY_"):
                if os.environ.get("APPTAINER_" + n[len("SINGULARITY_"):]):
                    continue
                warn(f"DEPRECATED USAGE: Environment variable {n} will not be supported in the future, "
                     f"use APPTAINER_{n[len('SINGULARITY_'):]} instead")
            out.extend(v for v in split_pflag_list(os.environ[n]) if v)
    return out


# --- image commands: build, pull, push, inspect ---------------------------------------------------

IMAGE_MAGIC = "#!kit-standin image"
SECTION_RE = re.compile(r"^%([A-Za-z]+)(?:\s.*)?$")
SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help", "arguments"}
BUILD_VAR_RE = re.compile(r"{{\s*(\w+)\s*}}")
AGENTS = {"docker", "docker-daemon", "docker-archive", "oci", "oci-archive", "oras", "library", "localimage",
          "scratch", "busybox", "debootstrap", "yum", "dnf", "zypper", "arch", "shub", "buildkit"}


def usage_error(message: str, prog: str, sub: str, usage: str) -> None:
    sys.stderr.write(f"Error: {message}\n\nUsage:\n  {prog} {sub} {usage}\n\n"
                     f"Run '{prog} {sub} --help' for more detailed usage information.\n")
    sys.exit(255)


def parse_flags(args: list[str], bools: dict, valued: dict, prog: str, sub: str, usage: str) -> tuple[dict, list[str]]:
    """pflag-like parsing for the image commands: flags may come anywhere (cobra intersperses them),
    `--name=v`, `-n v`, grouped boolean shorthands (`-edl`); `--` ends the flags. `bools`/`valued` map
    each spelling to an option key (None: accepted and ignored); repeated valued flags accumulate."""
    opts: dict = {}
    pos: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            pos.extend(args[i + 1:])
            break
        if not a.startswith("-") or a == "-":
            pos.append(a)
            i += 1
            continue
        if a.startswith("--"):
            name, eq, inline = a.partition("=")
            if name in bools:
                if eq and inline.lower() not in ("true", "false", "1", "0", "t", "f"):
                    usage_error(f'invalid argument "{inline}" for "{name}" flag: strconv.ParseBool: parsing '
                                f'"{inline}": invalid syntax', prog, sub, usage)
                if bools[name]:
                    opts[bools[name]] = (inline.lower() in ("true", "1", "t")) if eq else True
                i += 1
                continue
            if name in valued:
                if eq:
                    value, i = inline, i + 1
                elif i + 1 < len(args):
                    value, i = args[i + 1], i + 2
                else:
                    usage_error(f"flag needs an argument: {name}", prog, sub, usage)
                if valued[name]:
                    opts.setdefault(valued[name], []).append(value)
                continue
            usage_error(f"unknown flag: {name}", prog, sub, usage)
        # shorthand(s): -f, -fT, -n value, -nvalue, -n=value
        j = 1
        while j < len(a):
            flag = "-" + a[j]
            if flag in bools:
                if bools[flag]:
                    opts[bools[flag]] = True
                j += 1
                continue
            if flag in valued:
                rest = a[j + 1:]
                if rest.startswith("="):
                    rest = rest[1:]
                if rest:
                    value = rest
                elif i + 1 < len(args):
                    value = args[i + 1]
                    i += 1
                else:
                    usage_error(f"flag needs an argument: '{a[j]}' in {flag}", prog, sub, usage)
                if valued[flag]:
                    opts.setdefault(valued[flag], []).append(value)
                break
            usage_error(f"unknown shorthand flag: '{a[j]}' in {a}", prog, sub, usage)
        i += 1
    return opts, pos


def runtime_env(flavor: str, name: str) -> str | None:
    """SINGULARITY_<name> (SingularityCE); APPTAINER_<name>, else the legacy one with a warning (Apptainer)."""
    if flavor == "singularityce":
        return os.environ.get(f"SINGULARITY_{name}") or None
    if os.environ.get(f"APPTAINER_{name}"):
        return os.environ[f"APPTAINER_{name}"]
    if os.environ.get(f"SINGULARITY_{name}"):
        warn(f"DEPRECATED USAGE: Environment variable SINGULARITY_{name} will not be supported in the future, "
             f"use APPTAINER_{name} instead")
        return os.environ[f"SINGULARITY_{name}"]
    return None


def note_dirs(flavor: str, what: str, tmpdir_flag: str | None = None) -> None:
    """Leave traces that the cache and tmp dirs were used (the real runtime caches and unpacks there)."""
    cache = runtime_env(flavor, "CACHEDIR")
    if cache:
        try:
            os.makedirs(cache, exist_ok=True)
            with open(os.path.join(cache, "kit-standin-cache.log"), "a") as f:
                f.write(what + "\n")
        except OSError as exc:
            fatal(f"Failed to create an image cache handle: could not create cache directory {cache}: {exc.strerror}")
    tmp = tmpdir_flag or runtime_env(flavor, "TMPDIR")
    if tmp:
        if not os.path.isdir(tmp):
            fatal(f"Unable to create build: while creating temporary directory: stat {tmp}: no such file or directory")
        try:
            with open(os.path.join(tmp, "kit-standin-tmp.log"), "a") as f:
                f.write(what + "\n")
        except OSError as exc:
            fatal(f"Unable to create build: while creating temporary directory in {tmp}: {exc.strerror}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_file_atomic(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".kit-standin-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)  # SIF files are executable (`./img.sif` runs the runscript)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- definition files

def parse_def(text: str) -> tuple[dict, dict]:
    """(header {lower-case key: value}, sections {name: [bodies]}): the header is the `Key: value` lines
    before the first section; a section starts at a `%name [args]` line; sections may repeat."""
    header: dict = {}
    sections: dict = {}
    current, body = None, []
    for line in text.splitlines():
        m = SECTION_RE.match(line.strip())
        if m and (m.group(1).lower() in SECTIONS or m.group(1).lower().startswith("app")):
            if current is not None:
                sections.setdefault(current, []).append("\n".join(body))
            current, body = m.group(1).lower(), []
        elif current is None:
            s = line.strip()
            key, colon, value = s.partition(":")
            if s and not s.startswith("#") and colon:
                header[key.strip().lower()] = value.strip()
        else:
            body.append(line)
    if current is not None:
        sections.setdefault(current, []).append("\n".join(body))
    return header, sections


def section_text(sections: dict, name: str) -> str:
    """Repeated sections are appended to each other; surrounding blank lines dropped, indentation kept."""
    parts = [p.strip("\n") for p in sections.get(name, [])]
    return "\n".join(p for p in parts if p.strip()).rstrip()


def parse_labels(text: str) -> dict:
    labels = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        labels[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return labels


def fill_build_args(text: str, spec: str, cli_args: list[str], arg_file: str | None) -> str:
    if not BUILD_VAR_RE.search(text):
        return text
    _, sections = parse_def(text)
    values: dict = {}
    for line in section_text(sections, "arguments").splitlines():
        k, eq, v = line.strip().partition("=")
        if eq and k.strip():
            values[k.strip()] = v.strip()
    given: dict = {}
    if arg_file:
        try:
            with open(arg_file) as f:
                for line in f:
                    k, eq, v = line.strip().partition("=")
                    if eq and k and not k.startswith("#"):
                        given[k] = v
        except OSError as exc:
            fatal(f"While processing the definition file: read build args file {arg_file}: {exc.strerror}")
    for item in cli_args:
        k, eq, v = item.partition("=")
        if not eq or not k:
            fatal(f"While processing the definition file: build-arg {item!r} is not in KEY=VALUE form")
        given[k] = v
    values.update(given)
    used = set()
    missing = []

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            missing.append(name)
            return m.group(0)
        used.add(name)
        return values[name]

    out = BUILD_VAR_RE.sub(repl, text)
    if missing:
        fatal(f"Unable to build from {spec}: build var {missing[0]} is not defined through either --build-arg "
              "(--build-arg-file) or 'arguments' section")
    unused = sorted(set(given) - used)
    if unused:
        warn(f"Unused build args: {' '.join(unused)}")
    return out


def image_bytes(def_text: str) -> bytes:
    header, sections = parse_def(def_text)
    meta = {"def_sha256": hashlib.sha256(def_text.encode()).hexdigest(), "from": header.get("from", ""),
            "labels": parse_labels(section_text(sections, "labels"))}
    return (IMAGE_MAGIC + "\n" + json.dumps(meta, sort_keys=True) + "\n" + def_text).encode()


# -- registry refs

def parse_ref(uri: str, need_tag: bool = False) -> tuple[str, str, str, str | None, str | None]:
    """(transport, host, path, tag, digest) for oras://HOST/PATH[:TAG|@sha256:HEX] and docker://[HOST/]PATH[...]."""
    transport, sep, rest = uri.partition("://")
    if not sep or not rest:
        fatal(f"Bad URI {uri}")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            fatal(f"invalid reference {uri}: digest must be sha256:<64 hex digits>")
    slash, colon = rest.rfind("/"), rest.rfind(":")
    tag = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
    first, _, remainder = rest.partition("/")
    if transport == "docker":
        if remainder and ("." in first or ":" in first or first == "localhost"):
            host, path = first, remainder
        else:
            host, path = "docker.io", rest if "/" in rest else f"library/{rest}"
        if tag is None and digest is None:
            tag = "latest"
    else:
        host, path = first, remainder
        if not path:
            fatal(f"invalid reference {uri}: a registry host and a repository path are needed")
        if tag is None and digest is None:
            if need_tag:
                fatal(f"Unable to push image to oci registry: invalid reference {uri}: no tag")
            tag = "latest"
    parts = [host, *path.split("/")]
    if any(p in ("", ".", "..") for p in parts) or (tag is not None and (not tag or "/" in tag)):
        fatal(f"invalid reference {uri}")
    return transport, host, path, tag, digest


def oras_root(uri: str, host: str) -> str:
    root = os.environ.get("KIT_STANDIN_ORAS_ROOT")
    if not root:
        fatal(f"While pulling image from oci registry: {uri}: dial tcp: lookup {host}: no such host "
              "(kit stand-in: KIT_STANDIN_ORAS_ROOT is not set)")
    return root


def artifact_path(uri: str) -> str:
    """The registry file for a pull, or FATAL 'manifest unknown' like the real runtime."""
    transport, host, path, tag, digest = parse_ref(uri)
    root = oras_root(uri, host)
    base = os.path.join(root, "docker", host, *path.split("/")) if transport == "docker" else \
        os.path.join(root, host, *path.split("/"))
    found = None
    if digest:
        hexd = digest.split(":", 1)[1]
        if os.path.isdir(base):
            for name in sorted(os.listdir(base)):
                f = os.path.join(base, name)
                if name.endswith(".sif") and os.path.isfile(f) and sha256_file(f) == hexd:
                    found = f
                    break
    else:
        f = os.path.join(base, f"{tag}.sif")
        found = f if os.path.isfile(f) else None
    if found is None:
        ref = digest or tag
        if transport == "docker":
            fatal(f"While making image from oci registry: error fetching image: while fetching manifest: reading "
                  f"manifest {ref} in {host}/{path}: manifest unknown: manifest unknown")
        fatal(f"While pulling image from oci registry: error fetching image to cache: failed to get checksum for "
              f"{uri}: GET https://{host}/v2/{path}/manifests/{ref}: MANIFEST_UNKNOWN: manifest unknown; "
              f"map[Tag:{ref}]")
    return found


def fetch(uri: str, dest: str) -> None:
    """Copy the artifact for `uri` to `dest`, with the failure injections of KIT_STANDIN_PULL_*."""
    src = artifact_path(uri)
    with open(src, "rb") as f:
        data = f.read()
    fail_after = os.environ.get("KIT_STANDIN_PULL_FAIL_AFTER")
    corrupt = os.environ.get("KIT_STANDIN_PULL_CORRUPT") == "1"
    what = "While making image from oci registry" if uri.startswith("docker://") else \
        "While pulling image from oci registry"
    try:
        if fail_after not in (None, ""):
            try:
                n = max(0, int(fail_after))
            except ValueError:
                fatal(f"kit stand-in: KIT_STANDIN_PULL_FAIL_AFTER must be a byte count, not {fail_after!r}")
            with open(dest, "wb") as f:
                f.write(data[:n])
            _, host, _, _, _ = parse_ref(uri)
            fatal(f"{what}: error fetching image to cache: while pulling {uri}: read tcp 10.0.0.2:51744->"
                  f"{host}:443: read: connection reset by peer")
        if corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0x01]) if data else b"\x01"
        if os.path.isdir(dest):
            raise IsADirectoryError(21, "is a directory")
        write_file_atomic(dest, data)
    except OSError as exc:
        fatal(f"{what}: error copying image out of cache: open {os.path.abspath(dest)}: "
              f"{(exc.strerror or str(exc)).lower()}")


# -- the commands

BUILD_BOOLS = {"--fakeroot": "fakeroot", "-f": "fakeroot", "--force": "force", "-F": "force", "--notest": "notest",
               "-T": "notest", "--sandbox": "sandbox", "-s": "sandbox", "--update": "update", "-u": "update",
               "--disable-cache": None, "--fix-perms": None, "--nv": None, "--nvccli": None, "--rocm": None,
               "--no-cleanup": None, "--no-https": None, "--nohttps": None, "--no-setgroups": None,
               "--writable-tmpfs": None, "--oci": None, "--no-oci": None, "--docker-login": None}
BUILD_VALUED = {"--tmpdir": "tmpdir", "--build-arg": "build_arg", "--build-arg-file": "build_arg_file",
                "--bind": None, "-B": None, "--mount": None, "--section": None, "--arch": None,
                "--docker-host": None, "--authfile": None}


def cmd_build(prog: str, flavor: str, args: list[str]) -> None:
    usage = "[build options...] <image path> <build spec>"
    opts, pos = parse_flags(args, BUILD_BOOLS, BUILD_VALUED, prog, "build", usage)
    if len(pos) != 2:
        usage_error(f"accepts 2 arg(s), received {len(pos)}", prog, "build", usage)
    dest, spec = pos
    fakeroot = opts.get("fakeroot") or bool(runtime_env(flavor, "FAKEROOT"))
    if fakeroot and os.environ.get("KIT_STANDIN_NO_FAKEROOT") == "1":
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        fatal(f"could not use fakeroot: no mapping entry found in /etc/subuid for {user}")
    if opts.get("sandbox") or opts.get("update"):
        fatal("kit stand-in: sandbox builds are not supported (only SIF images)")
    # checkBuildTarget (non-interactive): no prompt, a refusal.
    if os.path.exists(dest) and not opts.get("force"):
        fatal(f"While checking build target: build target '{os.path.basename(dest)}' already exists. "
              "Use --force if you want to overwrite it")
    tmpdir = (opts.get("tmpdir") or [None])[-1]
    if re.match(r"^(docker|oras)://", spec):
        note_dirs(flavor, f"build {dest} {spec}", tmpdir)
        info("Starting build...")
        if spec.startswith("docker://"):
            info("Fetching OCI image...")
            info("Extracting OCI image...")
            info("Inserting Singularity configuration...")
        info("Creating SIF file...")
        fetch(spec, dest)
        info(f"Build complete: {dest}")
        return
    if "://" in spec:
        fatal(f"Unable to build from {spec}: kit stand-in builds from a definition file, docker:// or oras:// only")
    if not os.path.exists(spec):
        fatal(f"Unable to build from {spec}: unable to open file {spec}: open {spec}: no such file or directory")
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        fatal(f"Unable to build from {spec}: unable to read definition file: {exc}")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    key, colon, agent = first.partition(":")
    if not colon or key.strip().lower() != "bootstrap" or not agent.strip():
        fatal(f"Unable to build from {spec}: while parsing definition: {spec}: invalid build definition: "
              "the first keyword must be 'Bootstrap:'")
    text = fill_build_args(text, spec, opts.get("build_arg", []), (opts.get("build_arg_file") or [None])[-1])
    header, sections = parse_def(text)
    agent = header.get("bootstrap", "").lower()
    if agent not in AGENTS:
        fatal(f"Unable to build from {spec}: invalid bootstrap agent {header.get('bootstrap')!r}")
    if agent in ("docker", "oras", "library", "localimage", "docker-archive", "oci", "oci-archive") and \
            not header.get("from"):
        fatal(f"Unable to build from {spec}: while parsing definition: {spec}: bootstrap agent {agent} needs a "
              "'From:' header")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        fatal(f"While performing build: while creating SIF: open {os.path.abspath(dest)}: no such file or directory")
    note_dirs(flavor, f"build {dest} {spec}", tmpdir)
    info("Starting build...")
    if agent in ("docker", "docker-daemon", "docker-archive", "oci", "oci-archive"):
        info("Fetching OCI image...")
        info("Extracting OCI image...")
    elif agent == "oras":
        info("Downloading oras image")
    info("Inserting Singularity configuration...")
    if section_text(sections, "post"):
        info("Running post scriptlet")
    if section_text(sections, "help"):
        info("Adding help info")
    if section_text(sections, "labels"):
        info("Adding labels")
    if section_text(sections, "environment"):
        info("Adding environment to container")
    if section_text(sections, "runscript"):
        info("Adding runscript")
    if section_text(sections, "test"):
        info("Adding testscript")
        if not opts.get("notest"):
            info("Running testscript")
    info("Creating SIF file...")
    try:
        write_file_atomic(dest, image_bytes(text))
    except OSError as exc:
        fatal(f"While performing build: while creating SIF: {exc.strerror}")
    info(f"Build complete: {dest}")


PULL_BOOLS = {"--force": "force", "-F": "force", "--disable-cache": None, "--no-https": None, "--nohttps": None,
              "--allow-unsigned": None, "-U": None, "--allow-unauthenticated": None, "--oci": None,
              "--no-cleanup": None, "--docker-login": None}
PULL_VALUED = {"--name": "name", "--dir": "dir", "--tmpdir": "tmpdir", "--arch": None, "--library": None,
               "--docker-host": None, "--authfile": None, "--platform": None}


def cmd_pull(prog: str, flavor: str, args: list[str]) -> None:
    usage = "[pull options...] [output file] <URI>"
    opts, pos = parse_flags(args, PULL_BOOLS, PULL_VALUED, prog, "pull", usage)
    if not 1 <= len(pos) <= 2:
        usage_error(f"accepts between 1 and 2 arg(s), received {len(pos)}", prog, "pull", usage)
    uri = pos[-1]
    transport = uri.partition("://")[0] if "://" in uri else ""
    if transport not in ("oras", "docker"):
        fatal(f"kit stand-in: pull supports oras:// and docker:// only, not {uri}")
    _, host, path, tag, digest = parse_ref(uri)
    dest = (opts.get("name") or [None])[-1]
    if not dest:
        dest = pos[0] if len(pos) == 2 else f"{path.rsplit('/', 1)[-1]}_{tag or digest.split(':', 1)[1]}.sif"
    if opts.get("dir"):
        dest = os.path.join(opts["dir"][-1], dest)
    if os.path.lexists(dest) and not opts.get("force"):
        fatal(f'Image file already exists: "{dest}" - will not overwrite')
    note_dirs(flavor, f"pull {uri}", (opts.get("tmpdir") or [None])[-1])
    artifact_path(uri)  # a missing artifact fails before any progress message
    if transport == "docker":
        info("Converting OCI blobs to SIF format")
        info("Starting build...")
        info("Creating SIF file...")
    else:
        info("Downloading oras image")
    fetch(uri, dest)


PUSH_BOOLS = {"--allow-unsigned": None, "-U": None, "--docker-login": None}
PUSH_VALUED = {"--description": "description", "-D": "description", "--library": None, "--authfile": None}


def cmd_push(prog: str, flavor: str, args: list[str]) -> None:
    usage = "[push options...] <image> <URI>"
    opts, pos = parse_flags(args, PUSH_BOOLS, PUSH_VALUED, prog, "push", usage)
    if len(pos) != 2:
        usage_error(f"accepts 2 arg(s), received {len(pos)}", prog, "push", usage)
    src, uri = pos
    if "://" not in uri:
        fatal(f"bad uri {uri}")
    transport = uri.partition("://")[0]
    if transport != "oras":
        fatal(f"Unsupported transport type: {transport} (the kit stand-in pushes to oras:// only)")
    if opts.get("description"):
        warn("Description is not supported for push to oras. Ignoring it.")
    _, host, path, tag, digest = parse_ref(uri, need_tag=True)
    if digest:
        fatal(f"Unable to push image to oci registry: invalid reference {uri}: push needs a tag, not a digest")
    if not os.path.exists(src):
        fatal(f"Unable to push image to oci registry: stat {src}: no such file or directory")
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError as exc:
        fatal(f"Unable to push image to oci registry: open {src}: {(exc.strerror or '').lower()}")
    if not data.startswith(b"#!kit-standin"):
        fatal(f"Unable to push image to oci registry: unable to open image {src}: image format not recognized")
    root = os.environ.get("KIT_STANDIN_ORAS_ROOT")
    if not root:
        fatal(f"Unable to push image to oci registry: {uri}: dial tcp: lookup {host}: no such host "
              "(kit stand-in: KIT_STANDIN_ORAS_ROOT is not set)")
    target = os.path.join(root, host, *path.split("/"), f"{tag}.sif")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_file_atomic(target, data)
    except OSError as exc:
        fatal(f"Unable to push image to oci registry: {exc.strerror}")
    info("Upload complete")


INSPECT_BOOLS = {"--labels": "labels", "-l": "labels", "--deffile": "deffile", "-d": "deffile",
                 "--runscript": "runscript", "-r": "runscript", "--startscript": "startscript", "-s": "startscript",
                 "--test": "test", "-t": "test", "--environment": "environment", "-e": "environment",
                 "--helpfile": "helpfile", "-H": "helpfile", "--json": "json", "-j": "json",
                 "--list-apps": "list_apps", "--all": "all"}
INSPECT_VALUED = {"--app": "app"}


def build_date(path: str) -> str:
    t = datetime.datetime.fromtimestamp(os.stat(path).st_mtime, datetime.timezone.utc)
    return f"{t:%A}_{t.day}_{t:%B}_{t.year}_{t.hour}:{t.minute}:{t.second}_UTC"  # Go: Monday_2_January_2006_15:4:5_MST


def image_attributes(path: str, flavor: str) -> dict:
    """What the real runtime keeps in /.singularity.d for a stand-in image (FATAL if it is none)."""
    shown = path
    if not os.path.lexists(path):
        full = os.path.abspath(path)
        fatal(f"Failed to open image {shown}: failed to retrieve path for {shown}: lstat {full}: "
              "no such file or directory")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except IsADirectoryError:
        fatal(f"Failed to open image {shown}: image format not recognized")
    except OSError as exc:
        fatal(f"Failed to open image {shown}: {exc.strerror}")
    first, _, rest = text.partition("\n")
    if first == IMAGE_MAGIC:
        _, _, def_text = rest.partition("\n")
        header, sections = parse_def(def_text)
        version = VERSIONS[flavor].rsplit(" ", 1)[-1]
        labels = {"org.label-schema.build-arch": "amd64", "org.label-schema.build-date": build_date(path),
                  "org.label-schema.schema-version": "1.0",
                  "org.label-schema.usage.singularity.deffile.bootstrap": header.get("bootstrap", ""),
                  "org.label-schema.usage.singularity.deffile.from": header.get("from", "")}
        labels["org.label-schema.usage.apptainer.version" if flavor == "apptainer"
               else "org.label-schema.usage.singularity.version"] = version
        if section_text(sections, "help"):
            labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
            labels[f"org.label-schema.usage.{'apptainer' if flavor == 'apptainer' else 'singularity'}"
                   ".runscript.help"] = "/.singularity.d/runscript.help"
        labels.update(parse_labels(section_text(sections, "labels")))
        env = section_text(sections, "environment")
        run = section_text(sections, "runscript")
        test = section_text(sections, "test")
        return {"environment": {"/.singularity.d/env/90-environment.sh": ("#!/bin/sh\n\n" + env).rstrip("\n")}
                if env else {},
                "labels": labels,
                "runscript": ("#!/bin/sh\n\n" + run) if run else "",
                "test": ("#!/bin/sh\n\n" + test) if test else "",
                "helpfile": section_text(sections, "help"),
                "deffile": def_text,
                "startscript": ("#!/bin/sh\n\n" + section_text(sections, "startscript"))
                if section_text(sections, "startscript") else ""}
    if first.startswith("#!kit-standin"):
        head = first[len("#!kit-standin"):].strip()
        run = head[len("runscript="):] if head.startswith("runscript=") else ""
        envs = [ln.strip()[4:].strip() for ln in rest.splitlines() if ln.strip().startswith("env ") and "=" in ln]
        return {"environment": {"/.singularity.d/env/10-docker2singularity.sh":
                                "#!/bin/sh\n" + "".join(f"export {e}\n" for e in envs).rstrip("\n")} if envs else {},
                "labels": {"org.label-schema.build-arch": "amd64", "org.label-schema.schema-version": "1.0"},
                "runscript": f'#!/bin/sh\n\nexec {run} "$@"' if run else "",
                "test": "", "helpfile": "", "deffile": "", "startscript": ""}
    fatal(f"Failed to open image {shown}: image format not recognized")


def go_json(obj) -> str:
    """json.MarshalIndent(obj, "", "\\t") as Go writes it (HTML-safe escapes, UTF-8 as is)."""
    out = json.dumps(obj, indent="\t", ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        out = out.replace(ch, esc)
    return out


def cmd_inspect(prog: str, flavor: str, args: list[str]) -> None:
    usage = "[inspect options...] <image path>"
    opts, pos = parse_flags(args, INSPECT_BOOLS, INSPECT_VALUED, prog, "inspect", usage)
    if len(pos) != 1:
        usage_error(f"accepts 1 arg(s), received {len(pos)}", prog, "inspect", usage)
    attrs = image_attributes(pos[0], flavor)
    want_all = opts.get("all")
    as_json = opts.get("json") or want_all
    if (opts.get("app") or [None])[-1] and not want_all:
        attrs = {"labels": {}, "environment": {}}  # stand-in images have no SCIF apps
    others = ("deffile", "runscript", "startscript", "test", "environment", "helpfile", "list_apps")
    default_labels = not any(opts.get(k) for k in others)
    selected = {k for k in ("labels", *others) if opts.get(k) or want_all}
    if default_labels:
        selected.add("labels")
    # The order of inspect.Attributes' fields; empty ones are left out (omitempty).
    attributes: dict = {}
    for key in ("environment", "labels", "runscript", "test", "helpfile", "deffile", "startscript"):
        value = attrs.get(key)
        if key in selected and value:
            attributes[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
    if as_json:
        print(go_json({"data": {"attributes": attributes}, "type": "container"}))
        return
    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        if attributes.get(key):
            print(attributes[key])
    for k, v in attributes.get("environment", {}).items():
        print(f"=== {k} ===\n{v}\n")
    for k, v in attributes.get("labels", {}).items():
        print(f"{k}: {v}")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--as":
        sys.stderr.write("usage: runtime.py --as singularity|apptainer ARGS...\n")
        sys.exit(2)
    prog = os.path.basename(argv[1])
    args = argv[2:]
    flavor = os.environ.get("KIT_STANDIN_RUNTIME_FLAVOR") or ("apptainer" if prog == "apptainer" else "singularityce")
    if flavor not in VERSIONS:
        sys.stderr.write(f"KIT_STANDIN_RUNTIME_FLAVOR must be singularityce or apptainer, not {flavor!r}\n")
        sys.exit(2)
    record(prog, args)

    while args and args[0] in GLOBAL_FLAGS:
        args = args[1:]
    if not args:
        sys.stderr.write(f"Usage:\n  {prog} [global options...] <command>\n")
        sys.exit(255)
    sub = args[0]
    if sub in ("--version", "-v", "version"):
        print(VERSIONS[flavor])
        return
    image_cmds = {"build": cmd_build, "pull": cmd_pull, "push": cmd_push, "inspect": cmd_inspect}
    if sub in image_cmds:
        image_cmds[sub](prog, flavor, args[1:])
        return
    if sub not in ("exec", "run"):
        sys.stderr.write(f"Error: unknown command \"{sub}\" for \"{prog}\" (the kit stand-in implements "
                         "exec, run, build, pull, push, inspect, version)\n")
        sys.exit(255)
    opts, rest = parse_options(args[1:], f"{prog} {sub}")
    if not rest:
        sys.stderr.write(f"Error: requires at least {2 if sub == 'exec' else 1} arg(s), only received 0\n")
        sys.exit(255)
    image, cmd_args = rest[0], rest[1:]
    runscript, image_env = read_image(image)
    if sub == "exec":
        if not cmd_args:
            sys.stderr.write("Error: requires at least 2 arg(s), only received 1\n")
            sys.exit(255)
        command = cmd_args
    else:
        if not runscript:
            fatal(f"no runscript found in {image} (add '#!kit-standin runscript=...' to the stand-in image)")
        command = runscript + cmd_args

    binds = parse_binds(env_binds(flavor) + opts["bind"])
    paths = PathMap(binds)
    env = build_env(flavor, opts, image_env, paths, image)
    command = [command[0]] + [paths.text(a) for a in command[1:]]
    if opts["pwd"]:
        target = paths.path(opts["pwd"])
        try:
            os.chdir(target)
        except OSError as exc:
            fatal(f"container creation failed: could not set working directory {opts['pwd']}: {exc.strerror}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        fatal(f'"{command[0]}": executable file not found in $PATH')
    except PermissionError:
        fatal(f'"{command[0]}": permission denied')


if __name__ == "__main__":
    main(sys.argv[1:])
