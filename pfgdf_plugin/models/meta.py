"""What a saved pruned model says about itself: one schema, written by every command and read by every other.

Examples:
    >>> meta = ModelMeta(timm_model="resnet18", num_classes=10, input_size=(3, 64, 64), macs_kept=0.4993)
    >>> ModelMeta.from_dict(meta.to_dict()) == meta
    True
    >>> ModelMeta.from_dict({"num_classes": "ten"})
    Traceback (most recent call last):
    ...
    ValueError: model metadata: num_classes must be an integer >= 1, got 'ten'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch.nn as nn

from pfgdf_plugin._util import validate

_WHERE = "model metadata: "


@dataclass(frozen=True)
class ModelMeta:
    """Metadata saved with a pruned model.

    Attributes:
        timm_model: the timm architecture the model was pruned from (rebuilds the unpruned baseline).
        num_classes, in_chans: the arguments it was created with (``None``: timm's defaults).
        input_size: ``(channels, height, width)`` it was pruned at.
        source: what was pruned (a timm name, a file, a zoo model).
        method: the criterion (``"pfgdf"``, ``"chip"``, ...).
        alpha: the threshold used; ``target`` the target searched (``{"kind": "macs", "keep": 0.5}``).
        macs_kept, params_kept: measured fractions kept.
        extra: anything else the writer wants to keep (JSON values).
    """

    timm_model: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: tuple[int, int, int] | None = None
    source: str | None = None
    method: str | None = None
    alpha: float | None = None
    target: dict[str, Any] | None = None
    macs_kept: float | None = None
    params_kept: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; ``extra`` keys sit beside the known ones."""
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out["input_size"] = list(self.input_size) if self.input_size else None
        return out | dict(self.extra)

    @classmethod
    def from_dict(cls, data: object) -> ModelMeta:
        """Parse and check metadata read from a file; unknown keys go to ``extra``."""
        if not isinstance(data, dict):
            raise ValueError(f"{_WHERE}expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: data.get(k) for k in known}
        checks = {
            "timm_model": validate.optional_text, "source": validate.optional_text,
            "method": validate.optional_text,
        }
        for key, check in checks.items():
            values[key] = check(_WHERE + key, values[key])
        for key in ("num_classes", "in_chans"):
            values[key] = validate.optional_int(_WHERE + key, values[key], 1)
        if values["input_size"] is not None:
            values["input_size"] = validate.input_size(_WHERE + "input_size", values["input_size"])
        for key in ("alpha", "macs_kept", "params_kept"):
            if values[key] is not None:
                values[key] = validate.number(_WHERE + key, values[key])
        if values["target"] is not None and not isinstance(values["target"], dict):
            raise validate.bad(_WHERE + "target", "a mapping such as {'kind': 'macs', 'keep': 0.5}", values["target"])
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def original_model(self) -> nn.Module | None:
        """The unpruned timm architecture (random weights), or ``None`` when no ``timm_model`` is recorded."""
        if not self.timm_model:
            return None
        from pfgdf_plugin.models.timm import create_model

        return create_model(self.timm_model, num_classes=self.num_classes, in_chans=self.in_chans)
