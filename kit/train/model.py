"""The model the trainer trains: loaded as the method asks (bf16/fp32, or 4-bit NF4 for QLoRA),
wrapped with LoRA adapters, and its optimizer and learning-rate schedule."""

from __future__ import annotations

import contextlib

from kit.errors import KitError
from kit.train.config import TrainConfig


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
    except (OSError, ValueError) as e:
        raise KitError(f"model {cfg.model}: cannot load its tokenizer: not a model directory and not in the "
                       f"HF cache ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dtype_of(cfg: TrainConfig):
    import torch

    return torch.bfloat16 if cfg.training.bf16 else torch.float32


def quantization(cfg: TrainConfig):
    """QLoRA: NF4 with double quantization, compute in the training dtype. Storage in that dtype
    too, so that FSDP can shard the packed weights with the rest."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype_of(cfg), bnb_4bit_quant_storage=dtype_of(cfg))


def load_model(cfg: TrainConfig, device, sharded: bool = False, weights: bool = True):
    """The model ready to train: adapters added (lora, qlora), gradient checkpointing as configured.

    QLoRA alone goes through peft's prepare_model_for_kbit_training, which casts every weight that
    is not 4-bit to fp32; sharded (FSDP) it keeps them in the storage dtype, as TRL does and as the
    planner counts it (kit/plan/memory.py: no upcast when n > 1). ``weights=False`` builds the same
    model on the meta device, reading no weight (see rank0_loads)."""
    model = pretrained(cfg, device) if weights else on_meta(cfg)
    model.config.use_cache = False
    checkpointing = {"use_reentrant": False}
    if cfg.method == "qlora" and not sharded:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    if cfg.adapters:
        model = add_adapters(model, cfg)
    return model


def rank0_loads(cfg: TrainConfig, sharded: bool) -> bool:
    """Whether rank 0 alone reads the base model, into host memory, and the other ranks build it on
    the meta device and receive their shards from rank 0 (accelerate's cpu_ram_efficient_loading):
    sharded LoRA and full fine-tuning. A node then holds the whole model once, not once per GPU.

    Not QLoRA: transformers quantizes it while streaming each checkpoint file straight onto the
    rank's GPU (device_map), so host memory holds one file at a time already; and only
    from_pretrained quantizes, so a model built from the config on the meta device would not
    even have the 4-bit layers whose packed weights and quantization state rank 0 would send.
    Each GPU holds the whole 4-bit model until FSDP shards it (the planner checks that it fits)."""
    return sharded and cfg.method != "qlora"


def prepared_model(cfg: TrainConfig, runtime):
    """This process's model, sharded when there are several, and the names of its trainable
    parameters. Every rank builds the same model from the same seed (the LoRA init), or receives
    rank 0's (rank0_loads)."""
    from_rank0 = rank0_loads(cfg, runtime.sharded)
    model = load_model(cfg, runtime.device, sharded=runtime.sharded, weights=runtime.main or not from_rank0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return runtime.prepare(model, from_rank0=from_rank0), trainable


def pretrained(cfg: TrainConfig, device):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype_of(cfg), "attn_implementation": cfg.training.attn_implementation,
              "local_files_only": True}
    if cfg.method == "qlora":
        kwargs.update(quantization_config=quantization(cfg), device_map={"": device})
    with loading(cfg):
        return AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)


def on_meta(cfg: TrainConfig):
    """The model from_pretrained would load, built from its config on the meta device: the same
    class, dtype and attention, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with loading(cfg):
        config = AutoConfig.from_pretrained(cfg.model, local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype_of(cfg),
                                                    attn_implementation=cfg.training.attn_implementation)


@contextlib.contextmanager
def loading(cfg: TrainConfig):
    """A model that cannot be loaded or built is one line naming the cause."""
    try:
        yield
    except ImportError as e:
        raise KitError(f"training.attn_implementation {cfg.training.attn_implementation}, method "
                       f"{cfg.method}: a library is missing: {str(e).splitlines()[0]}") from None
    except (OSError, ValueError) as e:
        raise KitError(f"model {cfg.model}: cannot load it: {str(e).splitlines()[0]}") from None


def add_adapters(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__.startswith("Linear")})
        raise KitError(f"lora.target_modules {lora.target_modules}: {str(e).splitlines()[0]} "
                       f"(allowed: all-linear or a list of {', '.join(names)})") from None


def build_optimizer(cfg: TrainConfig, params):
    import torch

    t = cfg.training
    name, lr = t.optimizer, t.learning_rate
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    import bitsandbytes.optim as bnb_optim

    cls = {"adamw_8bit": bnb_optim.AdamW8bit, "paged_adamw_8bit": bnb_optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb_optim.PagedAdamW32bit}[name]
    return cls(params, lr=lr, weight_decay=0.0)


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = cfg.training.warmup_for(total_steps)
    name = cfg.training.scheduler
    if name == "constant":
        name = "constant_with_warmup" if warmup else "constant"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


@contextlib.contextmanager
def evaluating(model):
    """Eval mode for a validation pass, without bitsandbytes' CPU trap: a 4-bit layer that sees an
    eval-mode forward without grad repacks its weights for inference, and training after that gets
    no gradients (loss flat). The 4-bit layers stay in training mode; dropout is still switched off."""
    import torch

    model.eval()
    for m in model.modules():
        if type(m).__name__ in ("Linear4bit", "Params4bit") or type(m).__module__.startswith("bitsandbytes"):
            m.training = True
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()
