"""The runtime stand-in's image commands, as `kit images` uses them (through spython for build,
pull and inspect; push directly). An image is `#!kit-standin image` and then its definition
file, so the same def always gives the same bytes.

- `build [--fakeroot] [--force] [--notest] OUT DEF`: DEF must begin with `Bootstrap:`; an existing
  OUT needs --force. KIT_STANDIN_NO_FAKEROOT=1 plays a site without fakeroot.
- `pull [--force] [--name OUT | OUT] oras://HOST/PATH:TAG`, `push IMAGE oras://HOST/PATH:TAG`: the
  registry is the directory $KIT_STANDIN_ORAS_ROOT, holding HOST/PATH/TAG.sif. Failures to inject:
  KIT_STANDIN_PULL_FAIL_AFTER=N writes N bytes, then fails; KIT_STANDIN_PULL_CORRUPT=1 flips the
  last byte.
- `inspect [-e -d -l -r -H -t --json] IMAGE`: the real JSON shape, from the embedded def.
- build and pull append a line to kit-standin-cache.log / kit-standin-tmp.log in the runtime's
  cache and tmp dirs (SINGULARITY_CACHEDIR, SINGULARITY_TMPDIR; APPTAINER_* for Apptainer).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sys

from standin.runtime import MAGIC, fatal, parse_def, read_image, usage


def info(message: str) -> None:
    sys.stderr.write(f"INFO:    {message}\n")


def parse_flags(args: list[str], switches: set, valued: set = frozenset()) -> tuple[dict, list[str]]:
    opts, pos = {}, []
    while args:
        a, args = args[0], args[1:]
        if not a.startswith("-"):
            pos.append(a)
        elif a in switches:
            opts[a] = True
        elif a in valued and args:
            opts[a], args = args[0], args[1:]
        else:
            usage(f"unknown flag: {a}")
    return opts, pos


def note_dirs(prog: str, what: str) -> None:
    for name, log in (("CACHEDIR", "cache"), ("TMPDIR", "tmp")):
        path = os.environ.get(f"APPTAINER_{name}") if prog == "apptainer" else None
        path = path or os.environ.get(f"SINGULARITY_{name}")
        if not path:
            continue
        if name == "CACHEDIR":
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            fatal(f"Unable to create build: stat {path}: no such file or directory")
        with open(os.path.join(path, f"kit-standin-{log}.log"), "a") as f:
            f.write(what + "\n")


def artifact(uri: str) -> str:
    m = re.fullmatch(r"oras://([^/]+)/([^:@]+):([\w.-]+)", uri)
    if not m:
        fatal(f"invalid reference {uri}: oras://HOST/PATH:TAG with a tag is needed")
    root = os.environ.get("KIT_STANDIN_ORAS_ROOT")
    if not root:
        fatal(f"{uri}: dial tcp: lookup {m.group(1)}: no such host (KIT_STANDIN_ORAS_ROOT is not set)")
    return os.path.join(root, m.group(1), *m.group(2).split("/"), f"{m.group(3)}.sif")


def build(prog: str, args: list[str]) -> None:
    opts, pos = parse_flags(args, {"--fakeroot", "-f", "--force", "-F", "--notest", "-T"})
    if len(pos) != 2:
        usage(f"build: accepts 2 arg(s), received {len(pos)}")
    out, spec = pos
    if (opts.get("--fakeroot") or opts.get("-f")) and os.environ.get("KIT_STANDIN_NO_FAKEROOT") == "1":
        fatal(f"could not use fakeroot: no mapping entry found in /etc/subuid for {pwd.getpwuid(os.getuid()).pw_name}")
    if os.path.exists(out) and not (opts.get("--force") or opts.get("-F")):
        fatal(f"While checking build target: build target '{os.path.basename(out)}' already exists. "
              "Use --force if you want to overwrite it")
    try:
        with open(spec) as f:
            text = f.read()
    except OSError as exc:
        fatal(f"Unable to build from {spec}: unable to open file {spec}: {exc.strerror}")
    header, _ = parse_def(text)
    if next(iter(header), None) != "bootstrap":
        fatal(f"Unable to build from {spec}: invalid build definition: the first keyword must be 'Bootstrap:'")
    note_dirs(prog, f"build {out} {spec}")
    info("Starting build...")
    with open(out, "w") as f:
        f.write(f"{MAGIC}\n{text}")
    info(f"Build complete: {out}")


def pull(prog: str, args: list[str]) -> None:
    opts, pos = parse_flags(args, {"--force", "-F"}, {"--name"})
    if not 1 <= len(pos) <= 2:
        usage(f"pull: accepts between 1 and 2 arg(s), received {len(pos)}")
    uri = pos[-1]
    src = artifact(uri)
    out = opts.get("--name") or (pos[0] if len(pos) == 2 else os.path.basename(src))
    if os.path.exists(out) and not (opts.get("--force") or opts.get("-F")):
        fatal(f'Image file already exists: "{out}" - will not overwrite')
    note_dirs(prog, f"pull {uri}")
    if not os.path.isfile(src):
        fatal(f"While pulling image from oci registry: {uri}: MANIFEST_UNKNOWN: manifest unknown")
    with open(src, "rb") as f:
        data = f.read()
    fail_after = os.environ.get("KIT_STANDIN_PULL_FAIL_AFTER")
    if fail_after:
        data = data[:int(fail_after)]
    elif os.environ.get("KIT_STANDIN_PULL_CORRUPT") == "1":
        data = data[:-1] + bytes([data[-1] ^ 1])
    with open(out, "wb") as f:
        f.write(data)
    if fail_after:
        fatal(f"While pulling image from oci registry: {uri}: read: connection reset by peer")


def push(prog: str, args: list[str]) -> None:
    _, pos = parse_flags(args, set())
    if len(pos) != 2:
        usage(f"push: accepts 2 arg(s), received {len(pos)}")
    src, uri = pos
    target = artifact(uri)
    if not os.path.exists(src):
        fatal(f"Unable to push image to oci registry: stat {src}: no such file or directory")
    read_image(src)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(src, "rb") as f, open(target, "wb") as out:
        out.write(f.read())
    info("Upload complete")


def inspect(prog: str, args: list[str]) -> None:
    opts, pos = parse_flags(args, {"-e", "-d", "-l", "-r", "-H", "-t", "--json", "-j"})
    if len(pos) != 1:
        usage(f"inspect: accepts 1 arg(s), received {len(pos)}")
    deffile = read_image(pos[0])
    _, sections = parse_def(deffile)
    labels = {}
    for line in sections.get("labels", "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            labels[key] = value.strip()
    attributes = {
        "environment": {"/.singularity.d/env/90-environment.sh": "#!/bin/sh\n\n" + sections["environment"]}
        if sections.get("environment") else None,
        "labels": labels,
        "runscript": "#!/bin/sh\n\n" + sections["runscript"] if sections.get("runscript") else None,
        "test": "#!/bin/sh\n\n" + sections["test"] if sections.get("test") else None,
        "helpfile": sections.get("help"),
        "deffile": deffile,
    }
    attributes = {k: v for k, v in attributes.items() if v}
    if opts.get("--json") or opts.get("-j"):
        print(json.dumps({"data": {"attributes": attributes}, "type": "container"}, indent="\t"))
    else:
        print("\n".join(f"{k}: {v}" for k, v in attributes.get("labels", {}).items()))
