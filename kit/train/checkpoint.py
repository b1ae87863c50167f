"""Checkpoints that are complete or absent: OUTPUT_DIR/checkpoints/step-NNNNNNNN/.

A checkpoint is written into ``.step-NNNNNNNN.tmp-<pid>`` and renamed into place when every file is
on disk; ``state.json`` is written last and marks it complete. Resume picks the newest complete one;
leftover temp directories (a process killed while writing) are removed at start and never read.

Single process: the trainable weights only (the LoRA adapter, or every weight for full fine-tuning)
as safetensors, plus the optimizer, the scheduler and the RNG states. Several processes (FSDP):
the same trainable weights and optimizer state, sharded, written by every rank at once through
torch.distributed.checkpoint (one file per rank and a .metadata index; nothing is gathered), the
scheduler from rank 0 and each rank's RNG state. A checkpoint resumes only with the number of
processes that wrote it (state.json "processes"): the data order of a step depends on it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from kit.errors import KitError

STEP_RE = re.compile(r"^step-(\d{8})$")
TMP_RE = re.compile(r"^\.step-\d{8}\.tmp-\d+$")
MARKER = "state.json"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def complete(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(output_dir: str | Path) -> Path | None:
    found = complete(output_dir)
    return found[-1][1] if found else None


def remove_partial(output_dir: str | Path) -> list[str]:
    """Delete temp directories left by a writer that died; returns their names."""
    root = checkpoints_dir(output_dir)
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if TMP_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
    return gone


def save(output_dir, step: int, model, optimizer, scheduler, state: dict, runtime, keep: int,
         trainable: set[str]) -> Path:
    """Write checkpoint ``step`` atomically, then keep only the newest ``keep`` complete ones."""
    import torch

    root = checkpoints_dir(output_dir)
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp-{runtime.broadcast(os.getpid())}"
    if runtime.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    runtime.barrier()
    if runtime.sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer, trainable), checkpoint_id=str(tmp))
    else:
        from safetensors.torch import save_file

        weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if runtime.main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), _rng_file(tmp, runtime))
    runtime.barrier()
    if runtime.main:
        _write_synced(tmp / MARKER, json.dumps(state, indent=2) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of the same step (a signal right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
        for _, old in complete(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    runtime.barrier()
    return final


def load(path: Path, model, optimizer, scheduler, runtime, trainable: set[str]) -> dict:
    """Restore everything ``save`` wrote; returns the state dict (step, data position, ...)."""
    import torch

    state = json.loads((path / MARKER).read_text())
    written_by = state.get("processes", 1)
    if written_by != runtime.world:
        raise KitError(f"{path}: written by {written_by} process{'es' if written_by > 1 else ''}, resumed with "
                       f"{runtime.world}; resume with --nproc {written_by} (the data order depends on it) "
                       "or use a new output_dir")
    if runtime.sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_state_dict,
        )

        sharded = _sharded_state(model, optimizer, trainable)
        try:
            dcp.load(sharded, checkpoint_id=str(path))
        except CheckpointException as e:  # a missing key or a shape, with every rank's traceback
            raise KitError(f"{path}: checkpoint does not match the model being trained ({type(e).__name__}); "
                           "was the config's model, method or lora changed? Use a new output_dir") from None
        set_state_dict(model, optimizer, model_state_dict=sharded["model"], optim_state_dict=sharded["optimizer"],
                       options=StateDictOptions(strict=False))
    else:
        from safetensors.torch import load_file

        weights = load_file(str(path / "trainable.safetensors"))
        if set(weights) != trainable:
            raise KitError(f"{path}: checkpoint does not match the model being trained "
                           f"({len(set(weights) ^ trainable)} trainable tensors differ); "
                           "was the config's model, method or lora changed? Use a new output_dir")
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(_rng_file(path, runtime), weights_only=False))
    return state


def _rng_file(directory: Path, runtime) -> Path:
    """Each rank's RNG state (dropout masks differ per rank); one process keeps the plain name."""
    return directory / (f"rng-{runtime.rank}.pt" if runtime.sharded else "rng.pt")


def _sharded_state(model, optimizer, trainable: set[str]) -> dict:
    """The trainable weights' shards and the optimizer's (frozen base weights are not saved)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    return {"model": {k: v for k, v in weights.items() if k in trainable}, "optimizer": optim}


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """The files of a checkpoint directory, then the directory itself."""
    for p in path.iterdir():
        if p.is_file():
            _fsync(p)
    _fsync(path)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
