"""What the sweep checks: its cases, its settings and criteria, and the choice of one variant per timm module."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pfgdf_plugin._util.validate import suggest

TARGET_MACS = 0.5
# Criterion 2: pruning at TARGET_MACS must remove at least 20% of the MACs.
MACS_KEPT_LIMIT = 0.8
NUM_CLASSES = 10
DEFAULT_TIMEOUT = 300.0
# A child above this resident memory is stopped: one model must not take the machine with it.
DEFAULT_MEMORY_LIMIT_GB = 12.0
# Outputs that differ less than this (relative) between two random inputs are nearly constant: flagged, and a
# failure when pruning made them so.
CONSTANT_OUTPUT = 1e-3


@dataclass(frozen=True)
class MacsException:
    """A family whose structure cannot lose 20% of its MACs: the measured floor and why."""

    max_kept: float
    why: str


# family (timm module) -> documented, measured exception to criterion 2. Add an entry only with the measured
# floor (the row's ``macs_floor``, from prune()'s "out of reach" error) and the structural reason.
MACS_EXCEPTIONS: dict[str, MacsException] = {}


@dataclass(frozen=True)
class Case:
    """One sweep entry: a timm module (``kind="module"``: its smallest variant) or one model, with overrides.

    ``input_size`` replaces the model's default input size; ``create_kwargs`` go to ``timm.create_model`` (a
    ViT needs ``img_size`` to accept a smaller input).
    """

    name: str
    kind: Literal["module", "model"] = "model"
    input_size: tuple[int, int, int] | None = None
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)


# The default test run: one of each kind of structure, at reduced inputs so that all five take about a minute.
FAST_SUBSET: tuple[Case, ...] = (
    Case("resnet10t", input_size=(3, 64, 64)),  # plain CNN with residual adds
    Case("mobilenetv3_small_050", input_size=(3, 64, 64)),  # depthwise convs, squeeze-excitation, hard-swish
    Case("cspresnet50", input_size=(3, 64, 64)),  # CSP: split and concatenated cross-stage paths
    Case("vit_tiny_patch16_224", input_size=(3, 32, 32), create_kwargs={"img_size": 32}),  # plain ViT
    Case("edgenext_xx_small", input_size=(3, 64, 64)),  # hybrid: conv stages with transposed attention
)


def module_of(model_name: str) -> str:
    """The timm module (the row's family) that registers ``model_name``.

    Raises:
        ValueError: ``model_name`` is not a registered timm model.

    Examples:
        >>> module_of("resnet18")
        'resnet'
    """
    import timm

    for module in timm.list_modules():
        if model_name in timm.list_models(module=module):
            return module
    raise ValueError(f"{model_name!r} is not a registered timm model")


def count_parameters(name: str) -> int:
    """Parameters of timm model ``name`` (default head), built on the meta device: no memory, no init cost.

    Falls back to a real (random-weight) build when the model cannot be built on the meta device.

    Examples:
        >>> count_parameters("resnet18")
        11689512
    """
    import timm
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        except Exception:
            model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def is_classifier(name: str) -> bool:
    """False for models timm configures without classes (feature encoders of vision-language or SAM models).

    Examples:
        >>> is_classifier("resnet18")
        True
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is None or cfg.num_classes is None or cfg.num_classes > 0


def smallest_variant(module: str, *, include_test_models: bool = False) -> str:
    """The model of timm module ``module`` with the fewest parameters; ties go to the first name.

    Image classifiers are preferred: models timm configures with ``num_classes=0`` (encoders) count only when the
    module has nothing else. ``test_*`` models (timm's own reduced-width test fixtures) are left out unless
    ``include_test_models``.

    Raises:
        ValueError: ``module`` is not a timm model module (with the closest names).

    Examples:
        >>> smallest_variant("efficientvit_msra")
        'efficientvit_m0'
    """
    import timm

    names = timm.list_models(module=module)
    if not names:
        raise ValueError(_unknown("module", module, timm.list_modules()))
    if not include_test_models:
        names = [n for n in names if not n.startswith("test_")] or names
    names = [n for n in names if is_classifier(n)] or names
    return min(names, key=lambda n: (count_parameters(n), n))


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    return f"unknown timm {what} {name!r}.{suggest(name, sorted(known))}"


def check_names(modules: Iterable[str] = (), models: Iterable[str] = ()) -> None:
    """Check timm module and model names before anything runs.

    Raises:
        ValueError: every unknown module or model name, each with its closest matches.

    Examples:
        >>> check_names(["resnett"])
        Traceback (most recent call last):
        ...
        ValueError: unknown timm module 'resnett'. Did you mean: resnet, tresnet, resnest, res2net, resnetv2?
    """
    import timm

    known_modules, known_models = set(timm.list_modules()), set(timm.list_models())
    errors = [_unknown("module", m, known_modules) for m in modules if m not in known_modules]
    errors += [_unknown("model", m, known_models) for m in models if m not in known_models]
    if errors:
        raise ValueError(" ".join(errors))


def cases_for(modules: Iterable[str] | None = None, models: Iterable[str] | None = None) -> list[Case]:
    """Sweep entries for modules (smallest variant each) and models; every module when both are empty.

    Raises:
        ValueError: an unknown module or model name (with the closest ones).

    Examples:
        >>> [(c.name, c.kind) for c in cases_for(["resnet"], ["vgg11"])]
        [('resnet', 'module'), ('vgg11', 'model')]
    """
    import timm

    modules, models = list(modules or ()), list(models or ())
    check_names(modules, models)
    if not modules and not models:
        modules = timm.list_modules()
    return [Case(m, kind="module") for m in modules] + [Case(m) for m in models]
