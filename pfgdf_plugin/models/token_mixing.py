"""Linear layers that mix tokens, not channels (gMLP's spatial gating, MLP-Mixer's token MLP).

Such a layer reads a ``(batch, tokens, channels)`` tensor transposed to ``(batch, channels, tokens)``: its
``in_features`` are token positions. Torch-Pruning cannot see that a transpose moved the channel axis, so it
put the layer's inputs and outputs into the channel group of the tensor it reads, and pruning that group cut
token positions (the model then fails). Found by one forward pass, they are traced as operations that carry
channels through unchanged, which is what they do to the channel axis.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.models.inputs import run_model

_TRANSPOSES = {torch.transpose, torch.Tensor.transpose, torch.permute, torch.Tensor.permute}


def _moves_last_axis(func: object, args: tuple, kwargs: dict, ndim: int) -> bool:
    if func in (torch.transpose, torch.Tensor.transpose):
        dims = list(args[1:3]) or [kwargs.get("dim0"), kwargs.get("dim1")]
        return any(d is not None and d % ndim == ndim - 1 for d in dims) and dims[0] % ndim != dims[1] % ndim
    if func in (torch.permute, torch.Tensor.permute):
        dims = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
        dims = list(dims or kwargs.get("dims", ()))
        return bool(dims) and dims[-1] % ndim != ndim - 1
    return False


class _Transposes(TorchFunctionMode):
    """Records tensors made by transposing a channels-last tensor so that channels are no longer last."""

    def __init__(self, channels_last: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.moved: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        src = args[0] if args else None
        if (
            func in _TRANSPOSES and isinstance(src, torch.Tensor) and src.dim() == 3
            and id(src) in self.channels_last and _moves_last_axis(func, args, kwargs, 3)
        ):
            self.moved[id(out)] = out
        return out


def find_token_mixing(model: nn.Module, example_inputs: object) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of ``model`` that read, directly, a 3-D tensor a linear or layer-norm layer made
    (channels last) after a transpose moved its channels off the last axis; in module order.

    Examples:
        >>> from timm.layers import GatedMlp
        >>> from timm.models.mlp_mixer import MlpMixer, SpatialGatingBlock
        >>> net = MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=16,
        ...                block_layer=SpatialGatingBlock, mlp_layer=GatedMlp, mlp_ratio=2).eval()
        >>> [n for n, m in net.named_modules() if m in find_token_mixing(net, torch.randn(1, 3, 32, 32))]
        ['blocks.0.mlp_channels.gate.proj', 'blocks.1.mlp_channels.gate.proj']
        >>> mixer = MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=1, embed_dim=16).eval()
        >>> [n for n, m in mixer.named_modules() if m in find_token_mixing(mixer, torch.randn(1, 3, 32, 32))]
        ['blocks.0.mlp_tokens.fc1']
    """
    channels_last: dict[int, torch.Tensor] = {}
    found: set[nn.Module] = set()
    mode = _Transposes(channels_last)

    def remember(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 3:
            channels_last[id(out)] = out  # kept alive for the pass, so no id is reused

    def check(m: nn.Module, inp: tuple) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and id(inp[0]) in mode.moved:
            found.add(m)

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            hooks.append(m.register_forward_hook(remember))
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(check))
    try:
        with eval_mode(model), torch.no_grad(), mode:
            run_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return [m for m in model.modules() if m in found]
