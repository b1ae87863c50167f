"""The serving engines (TGI, vLLM) as data: ``engines.yaml`` holds every fact about them that
the planner and the job templates use, and this module is the only reader of that file."""

from __future__ import annotations

from pathlib import Path

from kit.errors import KitError
from kit.resources import packaged_yaml

ENGINES_FILE = Path(__file__).resolve().parent / "engines.yaml"


def engines() -> dict[str, dict]:
    return packaged_yaml(ENGINES_FILE)


def names() -> list[str]:
    return list(engines())


def engine(name: str) -> dict:
    """One engine's facts, or a KitError listing the engines kit knows."""
    facts = engines().get(name)
    if facts is None:
        raise KitError(f"--engine {name}: allowed values are {', '.join(names())}")
    return facts


def engine_args(facts: dict, values: dict) -> list[str]:
    """The engine's command-line flags for the planned values ([flag, field] pairs in engines.yaml;
    a field whose value is None is left out)."""
    args: list[str] = []
    for flag, key in facts["args"]:
        value = values.get(key)
        if value is not None:
            args += [flag, str(value)]
    return args


def chat_model(name: str, served_model_name: str) -> str:
    """The OpenAI ``model`` that picks the base model on this engine (TGI: "tgi"; vLLM: its
    --served-model-name)."""
    return engine(name)["serve"]["chat_model"] or served_model_name
