"""A site layer over the packaged quest config that runs jobs with the stand-ins (for the
serving tests and benchmarks/serve_overhead.py)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import yaml

STANDIN = Path(__file__).resolve().parent
ROOT = STANDIN.parents[1]


def tgi_runscript() -> str:
    """containers/tgi.def's own %runscript, less what needs the real image (its ldconfig and venv)."""
    text = (ROOT / "containers" / "tgi.def").read_text().split("%runscript", 1)[1].split("\n%", 1)[0]
    lines = [line.strip() for line in text.splitlines()]
    return "\n    ".join(line for line in lines
                          if line and not line.startswith(("#", "ldconfig", ". /usr/src/.venv")))


def standin_site(base: Path) -> dict:
    """Tiny model, stand-in images and a user site layer under ``base``; returns the environment
    (to pass to `kit`) and the paths."""
    from standin.runtime import MAGIC
    from standin.tiny_model import build_tiny_chat_model

    model = build_tiny_chat_model(base / "models" / "tiny-chat")
    images = base / "images"
    images.mkdir(parents=True, exist_ok=True)
    for sif, runscript in (("tgi-3.3.7.sif", tgi_runscript()), ("vllm-0.19.1.sif", 'exec vllm serve "$@"')):
        (images / sif).write_text(f'{MAGIC}\nBootstrap: docker\n%runscript\n    {runscript}\n')
    # A lock that knows these stand-in images' checksums, as staff's build would record them.
    lock = yaml.safe_load((ROOT / "containers" / "images.lock").read_text())
    for name, entry in lock["images"].items():
        sif = images / entry["sif"]
        if sif.is_file():
            entry.update(sif_sha256=hashlib.sha256(sif.read_bytes()).hexdigest(), sif_size=sif.stat().st_size)
    (base / "images.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    xdg = base / "xdg"
    (xdg / "kit" / "sites").mkdir(parents=True, exist_ok=True)
    layer = {
        "accounting": False,
        "account": {"default": "p12345"},
        "runtime": {"module": None, "binds": [], "cache_dir": str(base / "rt-cache"), "tmp_dir": str(base / "rt-tmp")},
        "paths": {"image_dir": str(images), "scratch": str(base / "scratch"), "model_cache": str(base / "hf-cache"),
                  "state_dir": str(base / "state")},
        # Ten ports: two TGI jobs (three ports each) on one node would collide without kit's
        # per-node reservation.
        "network": {"port_range": [20000, 20009]},
    }
    (xdg / "kit" / "sites" / "quest.yaml").write_text(yaml.safe_dump(layer))
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
