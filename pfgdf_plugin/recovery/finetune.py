"""Fine-tuning a pruned model: cross-entropy (plus distillation from the unpruned teacher), timm's optimizer and
scheduler factories, atomic per-epoch checkpoints, exact resume, and DDP under ``torchrun``."""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.optim
import timm.scheduler
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pfgdf_plugin._util import io, validate
from pfgdf_plugin.recovery.distributed import all_sum, rank_and_world
from pfgdf_plugin.recovery.evaluate import evaluate


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (timm's optimizer and scheduler factories take ``opt`` and ``sched`` names)."""

    epochs: int = 5
    lr: float = 0.01
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = "cosine"
    distill_weight: float = 0.0
    temperature: float = 4.0
    seed: int = 0


@dataclass
class FinetuneResult:
    """History of a fine-tuning run: per epoch ``{"epoch", "loss", "train_accuracy", "val_accuracy", "lr"}``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_accuracy: float = 0.0
    best_epoch: int = -1
    seconds: float = 0.0
    checkpoint_dir: str | None = None


def _seed_epoch(loader: Iterable, seed: int, epoch: int) -> None:
    """Make epoch ``epoch``'s data order a function of ``(seed, epoch)`` alone, so a resumed run replays it."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # DistributedSampler
        sampler.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    epoch_seed = seed * 1_000_003 + epoch
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed)
    else:
        torch.manual_seed(epoch_seed)


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: KL between softened distributions, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def _check(cfg: FinetuneConfig, teacher: nn.Module | None, checkpoint_dir: object, resume: bool) -> None:
    validate.integer("epochs", cfg.epochs, 1)
    validate.positive_float("lr", cfg.lr)
    if not 0.0 <= cfg.distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {cfg.distill_weight!r}")
    if cfg.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model (the unpruned network)")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")


@dataclass
class _Run:
    """One fine-tuning run's moving parts."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    optimizer: Any
    scheduler: Any
    cfg: FinetuneConfig
    teacher: nn.Module | None
    result: FinetuneResult
    best_state: dict[str, torch.Tensor]
    ckpt_dir: Path | None
    rank: int
    world: int
    first_epoch: int = 0

    def resume(self) -> None:
        """Continue from ``last.pt`` (tensors and plain values only: read without unpickling code)."""
        assert self.ckpt_dir is not None
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            return
        state = torch.load(last, map_location=next(self.model.parameters()).device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        r = self.result
        r.history, r.best_accuracy, r.best_epoch = state["history"], state["best"], state["best_epoch"]
        self.best_state = state["best_state"]
        self.first_epoch = state["epoch"] + 1

    def train_epoch(self, loader: Iterable, epoch: int, progress: bool) -> tuple[float, float, float]:
        """One pass over ``loader``; returns (loss sum, correct, seen), summed over ranks."""
        cfg, device = self.cfg, next(self.model.parameters()).device
        self.model.train()
        seen = correct = 0
        loss_sum = 0.0
        # tqdm must not wrap the loader: constructing tqdm(loader) draws from the loader's generator.
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, file=sys.stderr,
                   leave=False)
        _seed_epoch(loader, cfg.seed, epoch)
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = self.net(images)
            loss = F.cross_entropy(logits, labels)
            if self.teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    soft = self.teacher(images)
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * _kd_loss(logits, soft, cfg.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        loss_sum, correct, seen = all_sum([loss_sum, correct, seen])
        return loss_sum, correct, seen

    def end_epoch(self, epoch: int, val: float) -> None:
        """Keep the best weights and write the checkpoints (rank 0 only, atomically)."""
        r = self.result
        if val > r.best_accuracy or r.best_epoch < 0:
            r.best_accuracy, r.best_epoch = val, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            if self.ckpt_dir is not None and self.rank == 0:
                io.write_with(self.ckpt_dir / "best.pt", lambda fh, s=self.best_state: torch.save(s, fh))
        if self.ckpt_dir is not None and self.rank == 0:
            state = {
                "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(), "history": r.history,
                "best": r.best_accuracy, "best_epoch": r.best_epoch, "best_state": self.best_state,
            }
            io.write_with(self.ckpt_dir / "last.pt", lambda fh, s=state: torch.save(s, fh))
        if self.ckpt_dir is not None and self.world > 1:
            torch.distributed.barrier()  # no rank runs ahead of a checkpoint it may have to resume from


def _start(model: nn.Module, cfg: FinetuneConfig, teacher: nn.Module | None,
           checkpoint_dir: str | os.PathLike | None) -> _Run:
    rank, world = rank_and_world()
    # Under torchrun, DDP averages gradients over the ranks; `model` keeps the same parameters.
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    scheduler, _ = timm.scheduler.create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                                      warmup_epochs=0)
    return _Run(model=model, net=net, optimizer=optimizer, scheduler=scheduler, cfg=cfg, teacher=teacher,
                result=FinetuneResult(checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir)),
                best_state=copy.deepcopy(model.state_dict()),
                ckpt_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None, rank=rank, world=world)




def finetune(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model`` in place with cross-entropy (plus distillation from ``teacher`` if given).

    Built on timm's ``create_optimizer_v2`` and ``create_scheduler_v2``. With ``checkpoint_dir``, the state
    after every epoch is written atomically to ``last.pt`` (model, optimizer, scheduler, history, RNG), and
    the best validation model to ``best.pt``; ``resume=True`` continues from ``last.pt`` and reproduces the
    uninterrupted run: each epoch's data order is fixed by ``(config.seed, epoch)`` (the loader's own
    generator is reseeded, or the global one if it has none; a distributed sampler gets ``set_epoch``).
    At the end the best weights are loaded into ``model``.

    Raises:
        ValueError: for bad settings (``epochs`` < 1, ``lr`` <= 0, ``distill_weight`` outside [0, 1], a
            distillation weight without a teacher, ``resume`` without ``checkpoint_dir``).

    Examples:
        >>> from pfgdf_plugin.data import load_dataset, split
        >>> train, val = split(load_dataset("digits", (1, 8, 8), limit=200))
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=32)
        >>> r = finetune(net, loader(train), loader(val), FinetuneConfig(epochs=2, lr=0.1), progress=False)
        >>> len(r.history), 0.0 <= r.best_accuracy <= 1.0
        (2, True)
    """
    cfg = config or FinetuneConfig()
    _check(cfg, teacher, checkpoint_dir, resume)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = _start(model, cfg, teacher, checkpoint_dir)
    progress = progress and run.rank == 0
    if resume:
        run.resume()
    if teacher is not None:
        teacher.eval()
    for epoch in range(run.first_epoch, cfg.epochs):
        loss_sum, correct, seen = run.train_epoch(train_loader, epoch, progress)
        run.scheduler.step(epoch + 1)
        val = evaluate(model, val_loader)
        run.result.history.append({
            "epoch": epoch, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "val_accuracy": val, "lr": run.optimizer.param_groups[0]["lr"],
        })
        run.end_epoch(epoch, val)
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {run.result.history[-1]['loss']:.4f}, "
                  f"val accuracy {val:.4f}", file=sys.stderr)
    model.load_state_dict(run.best_state)
    run.result.seconds = time.perf_counter() - start
    return run.result
