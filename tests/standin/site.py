"""A site layer over the packaged quest config that runs jobs with the stand-ins (for the
serving tests and benchmarks/serve_overhead.py)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import yaml

STANDIN = Path(__file__).resolve().parent
ROOT = STANDIN.parents[1]


def runscript(name: str, drop: tuple[str, ...] = ()) -> str:
    """containers/NAME.def's own %runscript, less the lines that need the real image (``drop``), with
    the image's programs called by name: the stand-ins in bin/ come first on the container's PATH."""
    text = (ROOT / "containers" / f"{name}.def").read_text().split("%runscript", 1)[1].split("\n%", 1)[0]
    lines = [re.sub(r"\bexec /(?:usr/local/)?bin/", "exec ", line.strip()) for line in text.splitlines()]
    return "\n    ".join(line for line in lines if line and not line.startswith(("#", *drop)))


def tgi_runscript() -> str:
    """containers/tgi.def's own %runscript, less what needs the real image (its ldconfig and venv)."""
    return runscript("tgi", ("ldconfig", ". /usr/src/.venv"))


def standin_site(base: Path, layer: dict | None = None) -> dict:
    """Tiny model, stand-in images (TGI, vLLM, Weaviate, TEI on GPU and CPU) and a user site layer
    (``layer`` adds to it) under ``base``; returns the environment (to pass to `kit`) and the paths."""
    from standin.runtime import MAGIC
    from standin.tiny_model import build_tiny_chat_model

    model = build_tiny_chat_model(base / "models" / "tiny-chat")
    images = base / "images"
    images.mkdir(parents=True, exist_ok=True)
    for sif, script in (("tgi-3.3.7.sif", tgi_runscript()), ("vllm-0.19.1.sif", 'exec vllm serve "$@"'),
                        ("weaviate-1.40.3.sif", runscript("weaviate")), ("tei-1.9.3.sif", runscript("tei")),
                        ("tei-cpu-1.9.3.sif", runscript("tei-cpu"))):
        (images / sif).write_text(f'{MAGIC}\nBootstrap: docker\n%runscript\n    {script}\n')
    # A lock that knows these stand-in images' checksums, as staff's build would record them.
    lock = yaml.safe_load((ROOT / "containers" / "images.lock").read_text())
    for name, entry in lock["images"].items():
        sif = images / entry["sif"]
        if sif.is_file():
            entry.update(sif_sha256=hashlib.sha256(sif.read_bytes()).hexdigest(), sif_size=sif.stat().st_size)
    (base / "images.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    xdg = base / "xdg"
    (xdg / "kit" / "sites").mkdir(parents=True, exist_ok=True)
    settings = {
        "accounting": False,
        "account": {"default": "p12345"},
        "runtime": {"module": None, "binds": [], "cache_dir": str(base / "rt-cache"), "tmp_dir": str(base / "rt-tmp")},
        "paths": {"image_dir": str(images), "scratch": str(base / "scratch"), "model_cache": str(base / "hf-cache"),
                  "state_dir": str(base / "state")},
        # Ten ports: two TGI jobs (three ports each) on one node would collide without kit's
        # per-node reservation.
        "network": {"port_range": [20000, 20009]},
    }
    for key, value in (layer or {}).items():
        layer_value = settings.get(key)
        settings[key] = dict(layer_value, **value) if isinstance(layer_value, dict) else value
    (xdg / "kit" / "sites" / "quest.yaml").write_text(yaml.safe_dump(settings))
    env = {
        "XDG_CONFIG_HOME": str(xdg),
        "KIT_STATE_DIR": str(base / "state"),
        "KIT_SITE": "quest",
        "PATH": f"{STANDIN / 'bin'}:{os.environ['PATH']}",
        "KIT_STANDIN_PYTHON": sys.executable,
        "KIT_STANDIN_LOG": str(base / "runtime.log"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "KIT_IMAGES_LOCK": str(base / "images.lock"),
    }
    return {"env": env, "model": model, "base": base, "images": images}


def cancel_jobs(base: Path) -> None:
    """scancel every job recorded under ``base``'s kit state: a test module leaves nothing running."""
    import json
    import subprocess

    for record in (base / "state" / "jobs").glob("*/record.json"):
        job_id = json.loads(record.read_text()).get("job_id")
        if job_id:
            subprocess.run(["scancel", str(job_id)], capture_output=True)
