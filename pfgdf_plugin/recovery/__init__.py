"""Recovery after pruning: BatchNorm recalibration, evaluation, and fine-tuning (single process or DDP)."""

from pfgdf_plugin.recovery.finetune import FinetuneConfig, FinetuneResult, evaluate, finetune, recalibrate_bn

__all__ = ["FinetuneConfig", "FinetuneResult", "evaluate", "finetune", "recalibrate_bn"]
