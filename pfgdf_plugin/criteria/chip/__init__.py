"""CHIP: channel independence computed exactly (``math``), streamed into per-channel sums (``stats``) by forward
hooks (``session``), read for each dependency group from the maps its layers consume (``members``), and used as a
Torch-Pruning importance (``importance``) that calibrates itself from its own data (``feed``) whenever the model
changed (``state``)."""

from pfgdf_plugin.criteria.chip.importance import FEATURES, NORMALIZATIONS, CHIPImportance
from pfgdf_plugin.criteria.chip.math import channel_independence
from pfgdf_plugin.criteria.chip.stats import LayerStats

__all__ = ["FEATURES", "NORMALIZATIONS", "CHIPImportance", "LayerStats", "channel_independence"]
