"""Models: timm's factory, small CIFAR networks, layer-type knowledge, and saved pruned models."""

from pfgdf_plugin.models.timm import create_model, default_input_size, find_classifier

__all__ = ["create_model", "default_input_size", "find_classifier"]
