"""Pipeline stage 2: recover a pruned model's accuracy: BatchNorm recalibration, then fine-tuning.

Pruning changes which channels feed every BatchNorm layer, so the running statistics it kept are stale: a
pruned network evaluated before recalibration is close to chance whatever the criterion. Recalibration
re-estimates them from a few batches (no gradients); fine-tuning then restores the weights.
"""

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
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check


def _dist() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over all ranks (a no-op in a single process)."""
    if _dist()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_loader(dataset: Dataset, batch_size: int, *, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A shuffled training loader whose *global* batches are the same however many processes share them.

    Under ``torchrun`` each of the ``W`` processes gets ``batch_size / W`` samples of every global batch
    (a ``DistributedSampler``); alone, it gets all of them. :func:`finetune` sets the sampler's epoch, so the
    order of epoch ``e`` depends on ``(seed, e)`` only. With a dataset size not divisible by ``W`` the
    sampler repeats a few samples to even out the shards.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10))
        >>> [len(b[1]) for b in train_loader(ds, 4)] == [4, 4, 2]
        True
    """
    rank, world = _dist()
    check.integer("batch_size", batch_size, 1)
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {world} processes")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size // world, sampler=sampler, num_workers=num_workers)


def _batches(loader: Iterable, limit: int | None) -> Iterable:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance from ``loader``; returns batches used.

    Statistics are reset and accumulated as an exact average over the batches (``momentum=None``); only the
    norm layers run in training mode, so dropout and friends stay off. Each module's mode and momentum are
    restored afterwards. Batches are ``images`` or ``(images, labels)``.

    Raises:
        ValueError: if ``num_batches`` < 1, the model has no BatchNorm layer, or the loader yields nothing.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        >>> recalibrate_bn(net, [torch.randn(8, 1, 6, 6) + 3.0 for _ in range(2)])
        2
        >>> float(net[1].running_mean.mean()) != 0.0
        True
    """
    check.optional_int("num_batches", num_batches, 1)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("model has no BatchNorm layer to recalibrate")
    device = next(model.parameters()).device
    saved = [(m, m.training, getattr(m, "momentum", None)) for m in model.modules()]
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in _batches(loader, num_batches):
            model(_images(batch).to(device))
            used += 1
    finally:
        for m, training, momentum in saved:
            m.training = training
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = momentum
    if used == 0:
        raise ValueError("loader yielded no batch: nothing to recalibrate from")
    return used


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_batches: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``(images, labels)`` batches, in [0, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for images, labels in _batches(loader, num_batches):
            pred = model(images.to(device)).argmax(1).cpu()
            correct += int((pred == labels).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    # Under torchrun: ranks evaluating shards sum to the whole; ranks evaluating everything keep the ratio.
    correct, total = _all_sum([correct, total])
    if total == 0:
        raise ValueError("evaluation loader yielded no batch")
    return correct / total


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

    Example:
        >>> from pfgdf_plugin.data import load_dataset, split
        >>> train, val = split(load_dataset("digits", (1, 8, 8), limit=200))
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=32)
        >>> r = finetune(net, loader(train), loader(val), FinetuneConfig(epochs=2, lr=0.1), progress=False)
        >>> len(r.history), 0.0 <= r.best_accuracy <= 1.0
        (2, True)
    """
    cfg = config or FinetuneConfig()
    check.integer("epochs", cfg.epochs, 1)
    check.positive_float("lr", cfg.lr)
    if not 0.0 <= cfg.distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {cfg.distill_weight!r}")
    if cfg.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model (the unpruned network)")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    rank, world = _dist()
    progress = progress and rank == 0
    # Under torchrun, DDP averages gradients over the ranks; `model` keeps the same parameters.
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    scheduler, _ = timm.scheduler.create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                                      warmup_epochs=0)
    result = FinetuneResult(checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
    best_state = copy.deepcopy(model.state_dict())
    first_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").is_file():
        state = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.history, result.best_accuracy, result.best_epoch = state["history"], state["best"], state["best_epoch"]
        best_state = state["best_state"]
        first_epoch = state["epoch"] + 1
    if teacher is not None:
        teacher.eval()

    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        # tqdm must not wrap the loader: constructing tqdm(loader) draws from the loader's generator.
        total = len(train_loader) if hasattr(train_loader, "__len__") else None
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, file=sys.stderr,
                   leave=False)
        _seed_epoch(train_loader, cfg.seed, epoch)
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
            if teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    soft = teacher(images)
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * _kd_loss(logits, soft, cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        loss_sum, correct, seen = _all_sum([loss_sum, correct, seen])
        scheduler.step(epoch + 1)
        val = evaluate(model, val_loader)
        result.history.append({
            "epoch": epoch, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "val_accuracy": val, "lr": optimizer.param_groups[0]["lr"],
        })
        if val > result.best_accuracy or result.best_epoch < 0:
            result.best_accuracy, result.best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
            if ckpt_dir is not None and rank == 0:
                _io.write_with(ckpt_dir / "best.pt", lambda fh, s=best_state: torch.save(s, fh))
        if ckpt_dir is not None and rank == 0:
            state = {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "history": result.history,
                "best": result.best_accuracy, "best_epoch": result.best_epoch, "best_state": best_state,
            }
            _io.write_with(ckpt_dir / "last.pt", lambda fh, s=state: torch.save(s, fh))
        if ckpt_dir is not None and world > 1:
            torch.distributed.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {result.history[-1]['loss']:.4f}, "
                  f"val accuracy {val:.4f}", file=sys.stderr)
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
