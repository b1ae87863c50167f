"""`python -m kit.train CONFIG [--nproc N]`: the fine-tuning job's entry point.

With --nproc N > 1 (and not already under torchrun) it re-executes itself under
`torchrun --standalone --nproc-per-node N`; each process then trains its shard (FSDP).
Exit: 0 finished, 75 interrupted and checkpointed (requeue), 2 bad input, 1 failure.
"""

from __future__ import annotations

import argparse
import os
import sys

from kit.errors import KitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.train", description="Fine-tune a model as CONFIG says.")
    parser.add_argument("config", metavar="CONFIG", help="the fine-tuning YAML (see `kit finetune init`)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N", help="GPUs on this node (default 1)")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc {args.nproc}: must be at least 1")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        import torch

        if torch.cuda.device_count() < args.nproc:
            print(f"kit: error: --nproc {args.nproc}: needs {args.nproc} GPUs (FSDP), this node shows "
                  f"{torch.cuda.device_count()}", file=sys.stderr)
            return 2
        cmd = ["torchrun", "--standalone", f"--nproc-per-node={args.nproc}", "-m", "kit.train", args.config]
        os.execvp(cmd[0], cmd)
    try:
        from kit.train.config import load_config
        from kit.train.trainer import train

        cfg = load_config(args.config)
        return train(cfg, os.path.abspath(args.config))
    except KitError as e:
        print(f"kit: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
