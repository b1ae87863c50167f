"""The training loop: optimizer steps over a seeded, resumable data order; metrics each step;
checkpoints every N steps and on SIGUSR1/SIGTERM; the adapter (or model) and summary at the end.

Exit statuses (the job template relies on them): 0 finished, 75 interrupted and checkpointed
(requeue me), 2 bad input, 1 anything else.
"""

from __future__ import annotations

import math
import os
import random
import signal
from contextlib import nullcontext
from pathlib import Path

from kit.errors import KitError
from kit.train import checkpoint, data
from kit.train.config import TrainConfig
from kit.train.metrics import MetricsLog, StepTimer, gpu_mem_gib, now, write_run, write_summary

EX_TEMPFAIL = 75
MAX_GRAD_NORM = 1.0  # as the HF Trainer's default


class Schedule:
    """Which examples make up optimizer step k: a pure function of (seed, k), so resuming needs
    only the step number. Each epoch is a seeded permutation; each rank takes every world-th example;
    a step is `gradient_accumulation` micro-batches (the last step of an epoch may have fewer)."""

    def __init__(self, n_examples: int, cfg: TrainConfig, world: int, rank: int):
        t = cfg.training
        self.n, self.world, self.rank, self.seed = n_examples, world, rank, t.seed
        self.batch_size, self.accumulation = t.batch_size, t.gradient_accumulation
        self.per_rank = n_examples // world
        if self.per_rank < 1:
            raise KitError(f"data.train: {n_examples} examples for {world} processes; need at least one each")
        self.micro_per_epoch = math.ceil(self.per_rank / self.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.accumulation)
        self.total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * self.steps_per_epoch))
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            perm = list(range(self.n))
            random.Random(f"{self.seed}/{epoch}").shuffle(perm)
            self._orders = {epoch: perm[self.rank::self.world][: self.per_rank]}
        return self._orders[epoch]

    def micro_batches(self, step: int) -> list[list[int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order, bs = self.order(epoch), self.batch_size
        first, last = k * self.accumulation, min((k + 1) * self.accumulation, self.micro_per_epoch)
        return [order[i * bs:(i + 1) * bs] for i in range(first, last)]

    def position(self, step: int) -> dict:
        epoch, k = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "micro_batch": min(k * self.accumulation, self.micro_per_epoch)}


class StopRequest:
    """SIGUSR1 / SIGTERM: finish the current optimizer step, checkpoint, exit 75."""

    def __init__(self):
        self.signal: str | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def agreed(self, accelerator) -> bool:
        """Every rank stops at the same step if any rank was signalled."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        import torch

        flag = torch.tensor([1 if self.signal else 0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())


def make_accelerator():
    """One process: plain. Launched by torchrun with several: FSDP through accelerate (untested
    without GPUs: full sharding, transformer-layer wrapping, original parameters for PEFT)."""
    import torch
    from accelerate import Accelerator

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not torch.cuda.is_available():
            # accelerate would run each process as if it were alone: all of them writing one output.
            raise KitError(f"{os.environ['WORLD_SIZE']} processes need GPUs (FSDP); on a CPU run one process")
        from accelerate import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap", use_orig_params=True,
                                                state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False)
        return Accelerator(fsdp_plugin=plugin)
    return Accelerator(cpu=not torch.cuda.is_available())


def train(cfg: TrainConfig, config_path: str) -> int:
    import torch
    from transformers import set_seed

    from kit.train.model import build_optimizer, build_scheduler, load_model, load_tokenizer

    out = Path(cfg.output_dir)
    if (out / "summary.json").is_file():
        print(f"kit.train: {out} holds a finished run (summary.json); nothing to do", flush=True)
        return 0
    stop = StopRequest()
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    tokenizer = load_tokenizer(cfg)
    train_set, val_set = datasets(cfg, tokenizer)  # bad data fails here, before anything is written
    schedule = Schedule(len(train_set), cfg, accelerator.num_processes, accelerator.process_index)
    set_seed(cfg.training.seed)
    model = load_model(cfg, accelerator.device)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in checkpoint.remove_partial(out):
            print(f"kit.train: removed {name}, a checkpoint whose writing was interrupted", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    scheduler = build_scheduler(cfg, optimizer, schedule.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = {"step": 0, "train_seconds": 0.0, "loss": None}
    resumed = checkpoint.latest(out)
    if resumed is not None:
        state = checkpoint.load(resumed, model, optimizer, scheduler, accelerator)
        print(f"kit.train: resumed from {resumed.name}", flush=True)
    metrics = MetricsLog(out, state["step"]) if main else None
    if main:
        write_run(out, {"resumed_from_step": state["step"] if resumed else None, "config": config_path,
                        "model": cfg.model, "method": cfg.method, "total_steps": schedule.total_steps,
                        "steps_per_epoch": schedule.steps_per_epoch, "train_examples": len(train_set),
                        "validation_examples": len(val_set), "processes": accelerator.num_processes,
                        "trainable_params": sum(p.numel() for p in params), "quantization": quantization_of(model),
                        "versions": versions()})

    pad_id = tokenizer.pad_token_id
    model.train()
    step, train_seconds, last_loss = state["step"], state["train_seconds"], state["loss"]
    timer = StepTimer()
    while step < schedule.total_steps:
        batches = [data.collate([train_set[i] for i in idx], pad_id) for idx in schedule.micro_batches(step)]
        n_items = sum(sum(1 for t in row[1:] if t != data.IGNORE) for b in batches for row in b["labels"])
        tokens, loss_total = 0, 0.0
        for i, b in enumerate(batches):
            batch = {k: torch.tensor(v, device=accelerator.device) for k, v in b.items()}
            sync = nullcontext() if i == len(batches) - 1 else accelerator.no_sync(model)
            with sync:
                loss = model(**batch, num_items_in_batch=max(n_items, 1)).loss
                accelerator.backward(loss)
            loss_total += loss.item()
            tokens += int(batch["attention_mask"].sum())
        accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = timer.lap()
        train_seconds += elapsed
        last_loss = loss_total
        stopping = stop.agreed(accelerator) and step < schedule.total_steps
        entry = {"step": step, "total_steps": schedule.total_steps, "epoch": round(step / schedule.steps_per_epoch, 4),
                 "loss": round(loss_total, 6), "learning_rate": lr,
                 "tokens_per_s": round(tokens * accelerator.num_processes / max(elapsed, 1e-9), 1),
                 "gpu_mem_gib": gpu_mem_gib(), "time": now()}
        if step % cfg.checkpoint.every_steps == 0 or stopping:
            if val_set:
                entry["eval_loss"] = round(evaluate(model, val_set, cfg, pad_id, accelerator), 6)
            if main:
                metrics.write(entry)
            state = {"step": step, **schedule.position(step), "train_seconds": train_seconds, "loss": last_loss,
                     "time": now()}
            path = checkpoint.save(out, step, model, optimizer, scheduler, state, accelerator, cfg.checkpoint.keep)
            print(f"kit.train: step {step}/{schedule.total_steps} loss {loss_total:.4f}: checkpoint {path.name}", flush=True)
            timer.lap()  # checkpoint time is not step time
        elif main:
            metrics.write(entry)
        if stopping:
            print(f"kit.train: {stop.signal}: stopped after step {step}; exit {EX_TEMPFAIL} to be requeued", flush=True)
            return EX_TEMPFAIL

    eval_loss = evaluate(model, val_set, cfg, pad_id, accelerator) if val_set else None
    save_result(cfg, model, tokenizer, accelerator)
    if main:
        write_summary(out, {"steps": step, "epochs": round(step / schedule.steps_per_epoch, 4), "final_loss": last_loss,
                            "eval_loss": eval_loss, "train_seconds": round(train_seconds, 3), "method": cfg.method,
                            "model": cfg.model, "output": str(cfg.result_dir)})
    print(f"kit.train: finished {step} steps; wrote {cfg.result_dir}", flush=True)
    return 0


def datasets(cfg: TrainConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    d, t = cfg.data, cfg.training
    records = data.read_records(d.train_files, d.format)
    val_records = data.read_records(d.validation_files, d.format) if d.validation_files else []
    if d.validation_split:
        records, val_records = data.split(records, d.validation_split, t.seed)

    def build(rs):
        return data.build_examples(rs, tokenizer, d.format, t.seq_len, t.packing, cfg.model) if rs else []

    return build(records), build(val_records)


def evaluate(model, examples: list[dict], cfg: TrainConfig, pad_id: int, accelerator) -> float:
    """Mean loss per answer token over the validation examples."""
    import torch

    from kit.train.model import evaluating

    total, count = 0.0, 0
    bs = cfg.training.batch_size
    with evaluating(model):
        for i in range(0, len(examples), bs):
            b = data.collate(examples[i:i + bs], pad_id)
            batch = {k: torch.tensor(v, device=accelerator.device) for k, v in b.items()}
            n = int((batch["labels"][:, 1:] != data.IGNORE).sum())
            if n:
                total += model(**batch).loss.item() * n
                count += n
    return total / max(count, 1)


def save_result(cfg: TrainConfig, model, tokenizer, accelerator) -> None:
    """The adapter (lora, qlora) or the model (full) with the tokenizer, written beside its final
    place and renamed into it."""
    import shutil

    final = cfg.result_dir
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model) if accelerator.num_processes > 1 else None
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(tmp, state_dict=state_dict, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    accelerator.wait_for_everyone()


def quantization_of(model) -> dict | None:
    q = getattr(accelerate_unwrapped(model).config, "quantization_config", None)
    return q.to_dict() if hasattr(q, "to_dict") else q


def accelerate_unwrapped(model):
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
