"""`python -m kit.train CONFIG [--nproc N]`: the fine-tuning job's entry point.

With --nproc N > 1 (and not already one of several processes) it starts N processes on this node
through torch's elastic launcher (kit.train.launch), one per GPU, or on a CPU with gloo; each holds
a shard of the model (FSDP2). Started by torchrun directly, each process trains its shard too.
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
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="processes on this node, one per GPU, sharding the model (default 1)")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc {args.nproc}: must be at least 1")
    try:
        from kit.train.config import load_config

        cfg = load_config(args.config)  # bad input is one line here, before any process starts
        if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
            from kit.train.launch import launch

            return launch(args.config, args.nproc)
        from kit.train.trainer import train

        return train(cfg, os.path.abspath(args.config))
    except KitError as e:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same bad input: say it once
            print(f"kit: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
