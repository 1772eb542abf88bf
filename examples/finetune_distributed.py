"""Fine-tune on real digits in one process or under torchrun (DDP; gloo on CPUs, NCCL on GPUs).

    python examples/finetune_distributed.py --output single.json
    torchrun --standalone --nproc_per_node=2 examples/finetune_distributed.py --output ddp.json

Both print and write the same per-epoch metrics: every global batch holds the same samples whatever the
number of processes (`pfgdf_plugin.recovery.finetune.train_loader`), and DDP averages gradients over them.
The model has no BatchNorm, whose per-process batch statistics would legitimately differ.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pfgdf_plugin._util.io import write_text
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.recovery import FinetuneConfig, finetune, train_loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch size (split over processes)")
    ap.add_argument("--images", type=int, default=1000, help="digits used (train 80%%, validation 20%%); keep the "
                    "training part divisible by the process count, or the sampler pads it with repeats")
    ap.add_argument("--output", required=True, help="metrics JSON (written by rank 0)")
    args = ap.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val = split(load_dataset("digits", (1, 8, 8), limit=args.images))
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    result = finetune(model, train_loader(train, args.batch_size, seed=0), DataLoader(val, 256),
                      FinetuneConfig(epochs=args.epochs, lr=0.05, weight_decay=0.0), progress=False)
    rank = torch.distributed.get_rank() if distributed else 0
    if rank == 0:
        world = torch.distributed.get_world_size() if distributed else 1
        write_text(args.output, json.dumps({"processes": world, "history": result.history}, indent=2) + "\n")
        print(json.dumps(result.history))
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
