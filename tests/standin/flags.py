"""The engines' command lines, parsed with the pinned flag sets of tests/engine_flags.yaml.

An unknown flag, a missing value or a value outside the flag's choices exits 2, as clap (TGI) and
argparse (vLLM) do, so a flag kit renders wrongly fails the tests.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import yaml

FLAGS_FILE = Path(__file__).resolve().parents[1] / "engine_flags.yaml"
PROG = {"tgi": "text-generation-launcher", "vllm": "vllm serve", "tei": "text-embeddings-router"}


def usage_error(engine: str, message: str):
    sys.stderr.write(f"{PROG[engine]}: error: {message}\n")
    sys.exit(2)


@functools.cache
def spec(engine: str) -> dict:
    return yaml.load(FLAGS_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))[engine]


def parse(engine: str, argv: list[str], environ) -> tuple[dict, list[str]]:
    """({--flag: value | [values] | True/False}, positional arguments); values from the env vars
    the engine reads fill in flags not given."""
    pinned = spec(engine)
    known, short, choices = pinned["flags"], pinned.get("short", {}), pinned.get("choices", {})
    multi, negated = set(pinned.get("multi_value", [])), set(pinned.get("no_forms", []))
    optional = set(pinned.get("optional_value", []))
    args: dict = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        if engine == "vllm":
            name = "--" + name[2:].replace("_", "-") if name.startswith("--") else name  # FlexibleArgumentParser
        name = short.get(name, name)
        if name not in known:
            usage_error(engine, f"unrecognized argument '{name}'")
        if not known[name] and eq and name in optional:
            args[name] = inline.lower() in ("1", "true", "on", "yes")
            continue
        if not known[name]:
            if eq:
                usage_error(engine, f"{name} takes no value")
            if name in negated:
                args["--" + name[len("--no-"):]] = False
            else:
                args[name] = True
            continue
        values = [inline] if eq else []
        while not eq and i < len(argv) and not argv[i].startswith("-" if values else "--") and (
                not values or name in multi):
            values.append(argv[i])
            i += 1
        if not values:
            usage_error(engine, f"{name} needs a value")
        args[name] = values if name in multi else values[0]
    for name, var in pinned.get("env", {}).items():
        if name not in args and environ.get(var):
            value = environ[var]
            args[name] = value.lower() in ("1", "true", "on", "yes") if not known[name] else (
                [value] if name in multi else value)
    for name, value in args.items():
        for v in value if isinstance(value, list) else [value]:
            if name in choices and str(v) not in [str(c) for c in choices[name]]:
                usage_error(engine, f"invalid value '{v}' for {name} (choose from {choices[name]})")
    if args.get("--help"):
        print(f"Usage: {PROG[engine]} [OPTIONS]\n" + "\n".join(sorted(known)))
        sys.exit(0)
    if args.get("--version"):
        print(f"{PROG[engine].split()[0]} {pinned['version']}")
        sys.exit(0)
    return args, positional


def number(engine: str, args: dict, name: str, default, kind=int):
    """A flag's value as a number (the engines' typed options), or exit 2."""
    try:
        return kind(args.get(name, default))
    except (TypeError, ValueError):
        usage_error(engine, f"invalid value '{args.get(name)}' for {name}")
