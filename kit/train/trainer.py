"""The training loop: optimizer steps over a seeded, resumable data order; metrics each step;
checkpoints every N steps and on SIGUSR1/SIGTERM; the adapter (or model) and summary at the end.
One process, or several sharding the model (kit.train.dist); only rank 0 writes files other than
its checkpoint shards.

Exit statuses (the job template relies on them): 0 finished, 75 interrupted and checkpointed
(requeue me), 2 bad input, 1 anything else.
"""

from __future__ import annotations

import math
import os
import random
import signal
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
    a step is `gradient_accumulation` micro-batches (the last step of an epoch may have fewer).
    So step k's examples over all ranks are the permutation's k-th run of world x batch_size x
    gradient_accumulation, whatever the world size: N processes with batch_size b see the data
    of one process with batch_size N x b (when N divides the number of examples)."""

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
    """SIGUSR1 / SIGTERM (or the launcher's stop file, see kit.train.launch): finish the current
    optimizer step, checkpoint, exit 75."""

    def __init__(self):
        from kit.train.launch import STOP_FILE_ENV

        self.signal: str | None = None
        self.stop_file = Path(os.environ[STOP_FILE_ENV]) if os.environ.get(STOP_FILE_ENV) else None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def agreed(self, runtime) -> bool:
        """Every rank stops at the same step if any rank was asked to."""
        if self.signal is None and self.stop_file is not None and self.stop_file.is_file():
            self.signal = self.stop_file.read_text().strip() or "stop"
        return runtime.sum(1 if self.signal else 0) > 0


def train(cfg: TrainConfig, config_path: str) -> int:
    from kit.train.dist import Runtime

    out = Path(cfg.output_dir)
    if (out / "summary.json").is_file():
        if os.environ.get("RANK", "0") == "0":
            print(f"kit.train: {out} holds a finished run (summary.json); nothing to do", flush=True)
        return 0
    stop = StopRequest()
    runtime = Runtime()
    try:
        return _train(cfg, config_path, runtime, stop)
    finally:
        runtime.close()


def _train(cfg: TrainConfig, config_path: str, runtime, stop: StopRequest) -> int:
    import torch
    from transformers import set_seed

    from kit.train.model import build_optimizer, build_scheduler, load_tokenizer, prepared_model

    out = Path(cfg.output_dir)
    main = runtime.main

    def say(message: str) -> None:
        if main:
            print(f"kit.train: {message}", flush=True)

    tokenizer = load_tokenizer(cfg)
    train_set, val_set = datasets(cfg, tokenizer)  # bad data fails here, before anything is written
    schedule = Schedule(len(train_set), cfg, runtime.world, runtime.rank)
    set_seed(cfg.training.seed)
    model, trainable = prepared_model(cfg, runtime)  # the same initial weights on every rank
    torch.manual_seed(cfg.training.seed + runtime.rank)  # dropout: each rank its own masks
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in checkpoint.remove_partial(out):
            say(f"removed {name}, a checkpoint whose writing was interrupted")
    runtime.barrier()
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: the shards
    optimizer = build_optimizer(cfg, params)
    scheduler = build_scheduler(cfg, optimizer, schedule.total_steps)
    sharding = runtime.shard_sizes(model) if runtime.sharded else None

    state = {"step": 0, "train_seconds": 0.0, "loss": None}
    resumed = checkpoint.latest(out)
    if resumed is not None:
        state = checkpoint.load(resumed, model, optimizer, scheduler, runtime, trainable)
        say(f"resumed from {resumed.name}")
    metrics = MetricsLog(out, state["step"]) if main else None
    if main:
        write_run(out, {"resumed_from_step": state["step"] if resumed else None, "config": config_path,
                        "model": cfg.model, "method": cfg.method, "total_steps": schedule.total_steps,
                        "steps_per_epoch": schedule.steps_per_epoch, "train_examples": len(train_set),
                        "validation_examples": len(val_set), "processes": runtime.world, "fsdp": sharding,
                        "trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
                        "quantization": quantization_of(model), "versions": versions()})

    pad_id = tokenizer.pad_token_id
    model.train()
    step, train_seconds, last_loss = state["step"], state["train_seconds"], state["loss"]
    timer = StepTimer()
    while step < schedule.total_steps:
        batches = [data.collate([train_set[i] for i in idx], pad_id) for idx in schedule.micro_batches(step)]
        # The loss is the mean over the step's answer tokens on all ranks together, as one process
        # with the whole global batch would compute it; FSDP averages gradients over the ranks, so
        # each rank's share is scaled back up by the world size.
        n_items = sum(sum(1 for t in row[1:] if t != data.IGNORE) for b in batches for row in b["labels"])
        n_items = max(int(runtime.sum(n_items)), 1)
        tokens, loss_total = 0, 0.0
        for b in batches:
            batch = {k: torch.tensor(v, device=runtime.device) for k, v in b.items()}
            loss = model(**batch, num_items_in_batch=n_items).loss
            (loss * runtime.world).backward()
            loss_total += loss.item()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_total, tokens = runtime.sum(loss_total), int(runtime.sum(tokens))
        elapsed = timer.lap()
        train_seconds += elapsed
        last_loss = loss_total
        stopping = stop.agreed(runtime) and step < schedule.total_steps
        entry = {"step": step, "total_steps": schedule.total_steps, "epoch": round(step / schedule.steps_per_epoch, 4),
                 "loss": round(loss_total, 6), "learning_rate": lr, "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                 "gpu_mem_gib": gpu_mem_gib(), "time": now()}
        if step % cfg.checkpoint.every_steps == 0 or stopping:
            if val_set:
                entry["eval_loss"] = round(evaluate(model, val_set, cfg, pad_id, runtime), 6)
            if main:
                metrics.write(entry)
            state = {"step": step, **schedule.position(step), "train_seconds": train_seconds, "loss": last_loss,
                     "processes": runtime.world, "time": now()}
            path = checkpoint.save(out, step, model, optimizer, scheduler, state, runtime, cfg.checkpoint.keep, trainable)
            say(f"step {step}/{schedule.total_steps} loss {loss_total:.4f}: checkpoint {path.name}")
            timer.lap()  # checkpoint time is not step time
        elif main:
            metrics.write(entry)
        if stopping:
            say(f"{stop.signal}: stopped after step {step}; exit {EX_TEMPFAIL} to be requeued")
            return EX_TEMPFAIL

    eval_loss = evaluate(model, val_set, cfg, pad_id, runtime) if val_set else None
    save_result(cfg, model, tokenizer, runtime, trainable)
    if main:
        write_summary(out, {"steps": step, "epochs": round(step / schedule.steps_per_epoch, 4), "final_loss": last_loss,
                            "eval_loss": eval_loss, "train_seconds": round(train_seconds, 3), "method": cfg.method,
                            "model": cfg.model, "output": str(cfg.result_dir)})
    say(f"finished {step} steps; wrote {cfg.result_dir}")
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


def evaluate(model, examples: list[dict], cfg: TrainConfig, pad_id: int, runtime) -> float:
    """Mean loss per answer token over the validation examples (every rank evaluates all of them:
    a sharded forward needs every rank, and the validation set is small)."""
    import torch

    from kit.train.model import evaluating

    total, count = 0.0, 0
    bs = cfg.training.batch_size
    with evaluating(model):
        for i in range(0, len(examples), bs):
            b = data.collate(examples[i:i + bs], pad_id)
            batch = {k: torch.tensor(v, device=runtime.device) for k, v in b.items()}
            n = int((batch["labels"][:, 1:] != data.IGNORE).sum())
            if n:
                total += model(**batch).loss.item() * n
                count += n
    return total / max(count, 1)


def save_result(cfg: TrainConfig, model, tokenizer, runtime, trainable: set[str]) -> None:
    """The adapter (lora, qlora) or the model (full) with the tokenizer, written by rank 0 beside
    its final place and renamed into it. Sharded weights are gathered to rank 0 first."""
    import shutil

    weights = runtime.full_weights(model, saved_by_peft(model) if cfg.adapters else None) if runtime.sharded else None
    if runtime.main:
        final = cfg.result_dir
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    runtime.barrier()


def saved_by_peft(model) -> set[str] | None:
    """The state-dict names peft's save_pretrained keeps: the adapter, and with an embedding layer
    or the LM head among the targets also that layer's base weight. Asked of peft itself with the
    sharded (ungathered) state dict, whose tensors it passes through; None (gather everything)
    if it ever returns a tensor that is not one of them."""
    from peft import get_peft_model_state_dict

    state = model.state_dict()
    names = {id(t): name for name, t in state.items()}
    picked = get_peft_model_state_dict(model, state_dict=state)
    found = {names.get(id(t)) for t in picked.values()}
    return None if None in found else found


def quantization_of(model) -> dict | None:
    q = getattr(model.config, "quantization_config", None)
    return q.to_dict() if hasattr(q, "to_dict") else q


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
