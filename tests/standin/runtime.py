"""Stand-in for the container runtimes: `singularity` plays SingularityCE, `apptainer` Apptainer.

`exec [options] IMAGE CMD...` and `run [options] IMAGE ARGS...` run the command on the host, after
doing to the command line and the environment what the runtime does, for what kit's job scripts use:

- options: switches such as --nv and --cleanenv; --bind SRC[:DST[:ro|rw]] (SRC must exist; a
  container path under DST is rewritten to SRC in the arguments and the environment); --env K=V.
- environment: the host's (none with --cleanenv/--containall, but the stand-ins' own KIT_STANDIN_*
  settings), then the image's %environment,
  then `<PREFIX>X=v` as `X=v` (SingularityCE: SINGULARITYENV_; Apptainer: APPTAINERENV_, else
  SINGULARITYENV_ with a deprecation warning), then --env. The prefixed variables are removed.
- `run` runs the image's %runscript with /bin/sh. The command is exec()ed: it keeps the runtime's
  PID, so SIGTERM reaches the engine.
- an image is a text file: `#!kit-standin image`, then a definition file (see images.py).
- binds also come from SINGULARITY_BIND / APPTAINER_BIND (and *_BINDPATH), as in the runtimes.
- every call appends {"argv", "cwd", "env_keys", "env_binds"} to $KIT_STANDIN_LOG: the names of
  the prefixed variables, never their values.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import sys

VERSIONS = {"singularity": "singularity-ce version 4.3.1", "apptainer": "apptainer version 1.4.0"}
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")
MAGIC = "#!kit-standin image"
SWITCHES = {"--nv", "--nvccli", "--rocm", "--cleanenv", "-e", "--containall", "-C", "--contain", "-c",
            "--no-home", "--writable-tmpfs", "--no-eval", "--compat", "--no-init", "--no-umask"}
CLEAN = {"--cleanenv", "-e", "--containall", "-C", "--compat"}
CLEAN_KEEP = ("HOME", "USER", "LOGNAME", "TERM", "LANG", "KIT_STANDIN_PYTHON", "KIT_STANDIN_LOG", "KIT_STANDIN_EXIT_DIR")


def fatal(message: str) -> None:
    sys.stderr.write(f"FATAL:   {message}\n")
    sys.exit(255)


def usage(message: str) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.exit(255)


BIND_VARS = {"singularity": ("SINGULARITY_BIND", "SINGULARITY_BINDPATH"),
             "apptainer": ("APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND", "SINGULARITY_BINDPATH")}


def env_binds(prog: str) -> list[str]:
    """Binds the runtime takes from its own variables, as the real ones do (comma lists)."""
    return [b for var in BIND_VARS[prog] for b in os.environ.get(var, "").split(",") if b]


def record(prog: str, args: list[str]) -> None:
    path = os.environ.get("KIT_STANDIN_LOG")
    if path:
        keys = sorted(k for k in os.environ if k.startswith(("SINGULARITYENV_", "APPTAINERENV_")))
        entry = {"argv": [prog, *args], "cwd": os.getcwd(), "env_keys": keys, "env_binds": env_binds(prog)}
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(entry) + "\n")


def parse_def(text: str) -> tuple[dict, dict]:
    """({header key, lower case: value}, {section: body}) of a definition file."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"%(\w+)", line.strip())
        if m:
            current = m.group(1).lower()
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line + "\n"
        elif ":" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip().lower()] = value.strip()
    return header, {name: body.strip("\n") for name, body in sections.items()}


def read_image(path: str) -> str:
    """The definition file inside a stand-in image; FATAL for anything else."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first, _, text = f.read().partition("\n")
    except FileNotFoundError:
        fatal(f"could not open image {os.path.abspath(path)}: no such file or directory")
    except OSError:
        first = ""
    if first != MAGIC:
        fatal(f"could not open image {os.path.abspath(path)}: image format not recognized")
    return text


def image_env(sections: dict) -> dict:
    """`[export] K=V` lines of %environment (one shell word as the value)."""
    env = {}
    for line in sections.get("environment", "").splitlines():
        key, eq, value = line.strip().removeprefix("export ").partition("=")
        if eq and re.fullmatch(r"[A-Za-z_]\w*", key):
            words = shlex.split(value)
            env[key] = words[0] if words else ""
    return env


def parse_binds(specs: list[str]) -> list[tuple[str, str]]:
    """(host SRC, container DST) pairs, the longest DST first; FATAL when a SRC is missing."""
    binds = []
    for spec in specs:
        parts = spec.split(":")
        src = parts[0]
        dst = parts[1] if len(parts) > 1 and parts[1] not in ("", "ro", "rw") else src
        if not os.path.exists(src):
            fatal(f"container creation failed: mount {src}->{dst} error: mount source {src} doesn't exist")
        binds.append((os.path.abspath(src), os.path.normpath(dst)))
    return sorted(binds, key=lambda b: len(b[1]), reverse=True)


def to_host(value: str, binds: list[tuple[str, str]]) -> str:
    """Container paths in `value` (whole, or after '=', ',' or ':') as their host paths."""
    def one(m: re.Match) -> str:
        path = m.group(0)
        for src, dst in binds:
            if path == dst or path.startswith(dst + "/"):
                return src + path[len(dst):]
        return path
    return re.sub(r"(?:^|(?<=[=,:]))/[^=,:]*", one, value)


def container_env(prog: str, opts: dict, image: dict, binds) -> dict:
    host, clean = os.environ, bool(opts["switches"] & CLEAN)
    env = {k: v for k, v in host.items()
           if (k in CLEAN_KEEP if clean else not k.startswith(("SINGULARITYENV_", "APPTAINERENV_")))}
    env["PATH"] = BIN + os.pathsep + host.get("PATH", "/usr/bin:/bin")  # the image's programs first
    env.update({k: to_host(v, binds) for k, v in image.items()})
    prefixes = ["SINGULARITYENV_"] if prog == "singularity" else ["APPTAINERENV_", "SINGULARITYENV_"]
    for prefix in reversed(prefixes):  # the first prefix wins
        for key, value in host.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and name:
                if prefix == "SINGULARITYENV_" and prog == "apptainer" and "APPTAINERENV_" + name not in host:
                    sys.stderr.write(f"WARNING: DEPRECATED USAGE: Environment variable {key} will not be "
                                     f"supported in the future, use APPTAINERENV_{name} instead\n")
                env[name] = to_host(value, binds)
    for item in opts["env"]:
        key, _, value = item.partition("=")
        env[key] = to_host(value, binds)
    return env


def parse_options(args: list[str]) -> tuple[dict, list[str]]:
    opts = {"switches": set(), "bind": [], "env": []}
    while args and args[0].startswith("-"):
        name, eq, value = args[0].partition("=")
        if name in SWITCHES:
            opts["switches"].add(name)
            args = args[1:]
            continue
        if name not in ("--bind", "-B", "--env"):
            usage(f"unknown flag: {name}")
        if not eq:
            if len(args) < 2:
                usage(f"flag needs an argument: {name}")
            value, args = args[1], args[1:]
        opts["env" if name == "--env" else "bind"] += [v for v in value.split(",") if v]
        args = args[1:]
    return opts, args


def main(prog: str, args: list[str]) -> None:
    record(prog, args)
    while args and args[0] in ("-q", "--quiet", "-s", "--silent", "-d", "--debug", "--nocolor"):
        args = args[1:]
    sub = args[0] if args else ""
    if sub in ("--version", "-v", "version"):
        print(VERSIONS[prog])
        return
    if sub in ("build", "pull", "push", "inspect"):
        from standin import images
        return getattr(images, sub)(prog, args[1:])
    if sub not in ("exec", "run"):
        usage(f'unknown command "{sub}" for "{prog}"')
    opts, rest = parse_options(args[1:])
    if not rest or (sub == "exec" and len(rest) < 2):
        usage(f"{sub}: too few arguments")
    _, sections = parse_def(read_image(rest[0]))
    binds = parse_binds(opts["bind"] + env_binds(prog))
    command = [to_host(a, binds) for a in rest[1:]]
    if sub == "run":
        if not sections.get("runscript"):
            fatal(f"no runscript in {rest[0]}")
        command = ["/bin/sh", "-c", sections["runscript"], rest[0], *command]
    env = container_env(prog, opts, image_env(sections), binds)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        fatal(f'"{command[0]}": executable file not found in $PATH ({exc.strerror})')
