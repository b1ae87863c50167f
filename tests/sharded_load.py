"""One process of a sharded run's model loading, as the trainer does it (kit.train.model.prepared_model),
then what the test checks: run under torch's launcher with 2 processes,
`python -m torch.distributed.run --standalone --nproc-per-node 2 sharded_load.py CONFIG OUT`.

Each rank writes OUT/rank-R.json (its peak RSS right after loading, which parameters train) and
OUT/buffers-R.safetensors (its buffers as they are); rank 0 also writes OUT/weights.safetensors,
every state-dict tensor gathered from the shards of all ranks.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(config: str, out: str) -> None:
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor
    from transformers import set_seed

    from kit.train.config import load_config
    from kit.train.dist import Runtime
    from kit.train.model import prepared_model

    cfg = load_config(config)
    runtime = Runtime()
    set_seed(cfg.training.seed)  # as the trainer: the LoRA init
    model, trainable = prepared_model(cfg, runtime)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    out = Path(out)
    whole = {n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone() for n, t in model.state_dict().items()}
    if runtime.main:
        save_file(whole, str(out / "weights.safetensors"))
    save_file({n: b.detach().clone() for n, b in model.named_buffers()}, str(out / f"buffers-{runtime.rank}.safetensors"))
    info = {"peak_rss_kib": peak_kib, "trainable": sorted(trainable),
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()}}
    (out / f"rank-{runtime.rank}.json").write_text(json.dumps(info))
    runtime.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
