"""Where this training process runs: alone (plain PyTorch), or as one of several that torchrun (or
`--nproc N`, see kit.train.launch) started on one node, which shard the model with FSDP2
(`torch.distributed.fsdp.fully_shard`).

Sharded runs differ by device only: CUDA GPUs talk over NCCL, CPU processes over gloo (slow, but
the same code: tests run it on a CPU). accelerate is not used: on a CPU it ignores an FSDP plugin and
wraps the model in DDP instead (accelerate 1.15, state.py: FSDP is only chosen for the MULTI_GPU-like
distributed types, never MULTI_CPU).
"""

from __future__ import annotations

import os
from datetime import timedelta

from kit.errors import KitError


WAIT_TIMEOUT = timedelta(hours=2)  # rank 0 reading or writing a 70B model on a slow filesystem


class Runtime:
    """This process's rank, world size and device; collectives that are no-ops for one process."""

    def __init__(self):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        cuda = torch.cuda.is_available()
        self.mesh = None
        if self.world == 1:
            self.device, self.backend = torch.device("cuda" if cuda else "cpu"), None
            return
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        if cuda:
            if local_world > torch.cuda.device_count():
                raise KitError(f"{local_world} processes on this node but {torch.cuda.device_count()} GPUs visible; "
                               "run one process per GPU")
            self.device, self.backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(self.device)
        else:
            self.device, self.backend = torch.device("cpu"), "gloo"
        dist.init_process_group(self.backend)
        self.mesh = init_device_mesh(self.device.type, (self.world,))
        # Waits on one rank's own work (rank 0 reading the whole model, or writing the result) may
        # outlast a collective's timeout (NCCL: 10 minutes); those waits go through a gloo group of
        # their own with a long one. A rank that dies is not waited for: the launcher stops the rest.
        self.waits = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def prepare(self, model, from_rank0: bool = False):
        """FSDP2 full sharding: each decoder layer (the classes transformers keeps on one device,
        `_no_split_modules`) is one unit, gathered for its forward and backward only; the rest
        (embeddings, final norm, LM head) is the root unit. Alone: the model moves to the device.

        ``from_rank0``: rank 0 alone loaded the weights and the other ranks built the same model
        on the meta device (kit.train.model.rank0_loads); once sharded, they receive their shards
        of rank 0's weights and all of its buffers."""
        if not self.sharded:
            return model if self.device.type == "cpu" or _on(model, self.device) else model.to(self.device)
        from torch.distributed.fsdp import fully_shard

        full = None
        if from_rank0:
            self.barrier()  # rank 0 has read the model
            self._check_same_model(model)
            full = model.state_dict() if self.main else {}  # rank 0's loaded tensors, held until sent
        names = set()
        for m in model.modules():
            names.update(getattr(m, "_no_split_modules", None) or ())
        for m in model.modules():
            if type(m).__name__ in names:
                fully_shard(m, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        if from_rank0:
            self._fill_from_rank0(model, full)
        return model

    def _check_same_model(self, model) -> None:
        """Every rank built what rank 0 loaded: the same tensors, shapes and dtypes (a dtype that
        differs would be converted silently when rank 0's weights are copied in)."""
        mine = [(n, tuple(t.shape), str(t.dtype)) for n, t in [*model.state_dict().items(), *model.named_buffers()]]
        theirs = self.broadcast(mine)
        first = next((f"{a} here, {b} there" for a, b in zip(mine, theirs) if a != b),
                     None if len(mine) == len(theirs) else f"{len(mine)} tensors here, {len(theirs)} there")
        bad = [(rank, diff) for rank, diff in enumerate(self.gather(first)) if diff]
        if bad:
            rank, diff = bad[0]
            raise KitError(f"process {rank} built another model than process 0 loaded: {diff}", exit_code=1)

    def _fill_from_rank0(self, model, full: dict) -> None:
        """The meta ranks' shards get memory, then rank 0's weights, one tensor at a time (torch's
        broadcast_from_rank0: rank 0 passes the full state dict, the others an empty one), then
        every buffer: non-persistent ones (rotary inv_freq) are in no state dict."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if not self.main:
            model.to_empty(device=self.device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for _, buffer in model.named_buffers(remove_duplicate=False):  # the same list on every rank, shared or not
            dist.broadcast(buffer, src=0)

    def shard_sizes(self, model) -> dict:
        """Elements of the parameters this process holds, per process, and of the whole model."""
        local = sum(_local(p).numel() for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        return {"backend": self.backend, "device": self.device.type, "param_elements": total,
                "param_elements_per_process": self.gather(local)}

    def sum(self, value: float) -> float:
        if not self.sharded:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, obj) -> list:
        if not self.sharded:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's value, on every rank."""
        if not self.sharded:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Every rank waits for the others, however long (``WAIT_TIMEOUT``)."""
        if self.sharded:
            import torch.distributed as dist

            dist.barrier(group=self.waits)

    def full_weights(self, model, names: set[str] | None = None) -> dict:
        """The named tensors of the model's state dict (all when ``names`` is None), whole and on
        the CPU, on rank 0 (empty elsewhere). Every rank must call it: each sharded tensor is
        gathered in turn, so no process ever holds more than one whole tensor at a time."""
        first = {}  # a tied weight (LM head = embeddings) is one parameter under two names
        alias = {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}
        out, gathered = {}, {}
        for name, t in model.state_dict().items():
            if names is not None and name not in names:
                continue
            same = alias.get(name, name)
            if same not in gathered:  # gathered once, and kept as one tensor, which save_pretrained
                whole = t.full_tensor() if _is_dtensor(t) else t  # then writes once, as one process does
                gathered[same] = whole.detach().cpu().contiguous() if self.main else None
            if self.main:
                out[name] = gathered[same]
        return out

    def close(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t):
    return t.to_local() if _is_dtensor(t) else t


def _on(model, device) -> bool:
    """QLoRA loads straight onto its device (device_map); moving a 4-bit model again is an error."""
    return all(p.device == device or (device.index is None and p.device.type == device.type)
               for p in model.parameters())
