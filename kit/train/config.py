"""The fine-tuning config file: its schema, loading with one-line errors, and the commented example.

Imports light (msgspec and yaml only): the login node validates and plans a config with it, and the
trainer inside the fine-tuning image reads the same file. Relative paths are relative to the config
file's directory; ``load_config`` returns them absolute.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from kit.errors import KitError

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]
Paths = str | Annotated[list[str], msgspec.Meta(min_length=1)]

FORMATS = ("chat", "instruction", "completion")
METHODS = ("full", "lora", "qlora")
# The planner's names (kit/plan/memory.yaml finetune.optimizers); a test keeps the two in step.
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd")


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Data(Strict):
    train: Paths
    format: Literal["chat", "instruction", "completion"] = "chat"
    validation: Paths | None = None
    validation_split: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None

    def __post_init__(self):
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("give validation or validation_split, not both")

    @property
    def train_files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def validation_files(self) -> list[str]:
        if self.validation is None:
            return []
        return [self.validation] if isinstance(self.validation, str) else list(self.validation)


class Lora(Strict):
    r: Positive = 16
    alpha: PositiveFloat = 32.0
    dropout: Fraction = 0.05
    target_modules: str | Annotated[list[str], msgspec.Meta(min_length=1)] = "all-linear"


class Training(Strict):
    epochs: PositiveFloat | None = None
    max_steps: Positive | None = None
    learning_rate: PositiveFloat = 2.0e-4
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: Fraction | None = None
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] | None = None
    batch_size: Positive = 1
    gradient_accumulation: Positive = 1
    seq_len: Positive = 2048
    packing: bool = False
    gradient_checkpointing: bool = True
    bf16: bool = True
    seed: int = 42
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"] = "adamw"

    def __post_init__(self):
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give epochs or max_steps, not both")
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("give warmup_ratio or warmup_steps, not both")

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return math.ceil((self.warmup_ratio or 0.0) * total_steps)


class Checkpoint(Strict):
    every_steps: Positive = 100
    keep: Positive = 2


class TrainConfig(Strict):
    model: str
    data: Data
    output_dir: str
    method: Literal["full", "lora", "qlora"] = "lora"
    lora: Lora = msgspec.field(default_factory=Lora)
    training: Training = msgspec.field(default_factory=Training)
    checkpoint: Checkpoint = msgspec.field(default_factory=Checkpoint)

    @property
    def adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def result_dir(self) -> Path:
        """OUTPUT_DIR/adapter (lora, qlora) or OUTPUT_DIR/model (full)."""
        return Path(self.output_dir) / ("adapter" if self.adapters else "model")


def load_config(path: str | Path, *, check_files: bool = True) -> TrainConfig:
    """Read and validate a config file; relative paths become absolute (relative to the file).

    With ``check_files`` the data files must exist and a model given as a path must be a directory.
    Any problem is a KitError naming the file and the key.
    """
    from kit.sites.validate import explain_validation_error
    from kit.yamlfile import read_yaml

    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: no such config file (write an example with `kit finetune init {path}`)")
    data = read_yaml(path)
    try:
        cfg = msgspec.convert(data, TrainConfig)
    except msgspec.ValidationError as e:
        keys, message = explain_validation_error(e, data, TrainConfig)
        key = ".".join(keys) + ": " if keys else ""
        raise KitError(f"{path}: {key}{message}") from None
    base = path.resolve().parent
    cfg = _absolute(cfg, base)
    if check_files:
        check_paths(cfg, path)
    return cfg


def _absolute(cfg: TrainConfig, base: Path) -> TrainConfig:
    def fix(p: str) -> str:
        return str((base / Path(p).expanduser()).resolve())

    def fix_all(v):
        return None if v is None else fix(v) if isinstance(v, str) else [fix(p) for p in v]

    data = msgspec.structs.replace(cfg.data, train=fix_all(cfg.data.train), validation=fix_all(cfg.data.validation))
    model = cfg.model
    if looks_like_path(model) or (base / model).is_dir():
        model = fix(model)
    return msgspec.structs.replace(cfg, data=data, model=model, output_dir=fix(cfg.output_dir))


def looks_like_path(model: str) -> bool:
    """A Hub id is ``org/name``; a path starts with / . or ~ (or exists next to the config)."""
    return model.startswith(("/", ".", "~"))


def check_paths(cfg: TrainConfig, path: Path) -> None:
    for key, files in (("data.train", cfg.data.train_files), ("data.validation", cfg.data.validation_files)):
        for f in files:
            if not Path(f).is_file():
                raise KitError(f"{path}: {key}: no such data file {f}")
    if Path(cfg.model).is_absolute() and not Path(cfg.model).is_dir():
        raise KitError(f"{path}: model: no such model directory {cfg.model} "
                       "(give a local directory or a Hub id in the HF cache)")


def example_config() -> str:
    """The commented example that `kit finetune init` writes; it loads once its data files exist."""
    return EXAMPLE


EXAMPLE = """\
# kit fine-tuning config: `kit finetune CONFIG` plans and submits it; inside the job the trainer
# runs `python -m kit.train CONFIG`. Relative paths are relative to this file.

# A local model directory, or a Hub id already in the HF cache (jobs do not download).
model: meta-llama/Llama-3.1-8B-Instruct

data:
  train: data/train.jsonl          # a JSONL file or a list of them
  # chat:        {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}
  # instruction: {"instruction": ..., "input": ... (optional), "output": ...}
  # completion:  {"prompt": ..., "completion": ...}
  # Only the assistant turns / output / completion are learned; the prompt is masked from the loss.
  format: chat
  # validation: data/val.jsonl     # a held-out file, or:
  validation_split: 0.05           # a fraction of train (not both)

method: lora                       # full | lora | qlora (4-bit NF4 base, double quantization)

lora:
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: all-linear       # or a list, e.g. [q_proj, k_proj, v_proj, o_proj]

training:
  epochs: 1                        # or max_steps: N (one of them)
  learning_rate: 2.0e-4
  scheduler: cosine                # cosine | linear | constant
  warmup_ratio: 0.03               # or warmup_steps: N
  batch_size: 1                    # micro-batch per GPU
  gradient_accumulation: 8         # optimizer step = batch_size x gradient_accumulation x GPUs records
  seq_len: 2048                    # longer records are truncated
  packing: false                   # concatenate records into seq_len blocks
  gradient_checkpointing: true     # recompute activations in backward: much less memory, ~30 % slower
  bf16: true                       # bf16 weights and compute (needs Ampere or newer); false: fp32
  seed: 42
  attn_implementation: sdpa        # sdpa | eager | flash_attention_2
  optimizer: adamw                 # adamw | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit | adafactor | sgd

checkpoint:
  every_steps: 100                 # also written when the job is signalled before its walltime
  keep: 2                          # newest complete checkpoints kept

# Checkpoints, metrics.jsonl, the adapter (or model) and summary.json go here.
output_dir: runs/my-lora
"""
