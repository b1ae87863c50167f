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
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shlex
import sys

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
    if sub not in ("exec", "run"):
        sys.stderr.write(f"Error: unknown command \"{sub}\" for \"{prog}\" (the kit stand-in implements "
                         "exec, run, version)\n")
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
