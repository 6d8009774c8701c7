"""The metric's options, in one place: `MetricConfig` and the factory `create_metric`.

Every entry point that builds a metric goes through here: `PerceptualDistance(...)` (its keyword
arguments are a `MetricConfig`'s fields), `lowps.distance` / `get_metric` (cached per config),
`lowps-score`'s scorers, the CLI (its metric flags and their choices are derived from the fields
below by `lowps.cli._common.add_metric_options`) and `lowps train linear`.

This module imports nothing heavy (no torch), so ``lowps --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

    from .metric import PerceptualDistance

__all__ = ["MetricConfig", "create_metric", "DISTANCES", "PRECISIONS", "STYLE_NORMS", "ACCELERATE", "WeightsSpec"]

#: ``None`` (the backbone's default weights), ``"random"`` (seeded random init, the paper's baseline),
#: ``"timm"`` (timm's pretrained weights), a registry name (``lowps.weights.list_weights()``), a local
#: file path or an http(s) URL.
WeightsSpec = Union[str, "os.PathLike[str]", None]

#: The distance heads (Kumar et al. 2022 sec. 3 and App. I): ``lowps.heads.HEADS`` registers one class per name.
DISTANCES = ("structure", "local", "meanpool", "style", "linear")
#: Trunk precisions; input normalisation and the heads always run float32 (or the module's dtype).
PRECISIONS = ("fp32", "bf16", "fp16")
#: Gram normalisation of the style head (the paper leaves it open, sec. 8.1; docs/concepts.md).
STYLE_NORMS = ("hw", "none")
#: ``auto``: the trunk in its fast inference form (`lowps.accel.accelerate`); ``none``: the reference network.
ACCELERATE = ("auto", "none")


def _check_choice(name: str, value: object, choices: Sequence[str], hint: str = "") -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}{hint}")


def _cli(help: str, **kw: Any) -> dict[str, Any]:
    """Field metadata read by the CLI: help text, choices, whether it is a flag at all."""
    return {"cli": {"help": help, **kw}}


@dataclass(frozen=True)
class MetricConfig:
    """Everything that defines a `PerceptualDistance` (Kumar et al. 2022): backbone -> taps -> head.

    Frozen and hashable: two equal configs build metrics that give the same numbers, so a config
    is a cache key (`lowps.get_metric`) and a record (`lowps-score` writes ``to_dict()``). Values are
    normalised on creation: paths become strings, ``layers`` a tuple, ``input_range`` a pair of floats.
    """

    backbone: str = field(default="resnet6", metadata=_cli(
        "lowps backbone (resnet6, resnet10, resnet18_tpu, ...) or timm model name"))
    distance: str = field(default="structure", metadata=_cli(
        "distance head: structure (per-channel spatial correlation + meanpool; lowps's default since 0.4, chosen on "
        "human judgements: docs/models.md), local (LPIPS eq. 1; the default in 0.3), meanpool (the paper's best on "
        "BAPPS), style (Gram), linear (trained LPIPS-style weights)",
        choices=DISTANCES))
    weights: WeightsSpec = field(default=None, metadata=_cli(
        "backbone weights: registry name, file, URL, 'random' or 'timm' (default: the backbone's default)"))
    layers: tuple[str | int, ...] | None = field(default=None, metadata=_cli(
        "comma-separated layer names or indices (default: all)", parse="layers"))
    input_range: tuple[float, float] = field(default=(0.0, 1.0), metadata={"cli": None})  # files are read as [0,1]
    head_weights: WeightsSpec = field(default=None, metadata=_cli(
        "linear head weights, a file or registry name, or 'ones' (for --distance linear)"))
    precision: str = field(default="fp32", metadata=_cli(
        "backbone precision; bf16 is faster on GPUs, CPUs with AMX and AMD CPUs with AVX-512 BF16 (elsewhere lowps "
        "warns and runs fp32), distances move by a few percent", choices=PRECISIONS))
    force_precision: bool = field(default=False, metadata=_cli(
        "run --precision even on a CPU that only emulates it (slow)"))
    style_norm: str = field(default="hw", metadata=_cli(
        "style head: divide each Gram matrix by H x W (hw) or not (none); the paper leaves it open (sec. 8.1)",
        choices=STYLE_NORMS))
    check_inputs: bool = field(default=True, metadata={"cli": None})  # the CLI's inputs come from files
    accelerate: str = field(default="auto", metadata=_cli(
        "auto: the trunk's fast inference form (lowps.accel; BatchNorm folded, CPU fast paths); none: the reference "
        "network (same distances within float rounding, slower)", choices=ACCELERATE))

    def __post_init__(self) -> None:
        from .inputs import parse_input_range  # late: inputs imports torch

        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a model name, got {self.backbone!r}")
        _check_choice("distance", self.distance, DISTANCES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("accelerate", self.accelerate, ACCELERATE)
        _check_choice("style_norm", self.style_norm, STYLE_NORMS,
                      " (hw: Gram / (H W), the default; none: the raw Gram)")
        if self.style_norm != "hw" and self.distance != "style":
            raise ValueError(f"style_norm={self.style_norm!r} applies only to distance='style', not "
                             f"{self.distance!r}; leave style_norm at 'hw' for other distances")
        for name in ("weights", "head_weights"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                put(name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, a path or None, got {type(value).__name__}")
        if self.layers is not None:
            put("layers", _parse_layers(self.layers))
        put("input_range", parse_input_range(self.input_range))
        for name in ("force_precision", "check_inputs"):
            value = getattr(self, name)
            if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's bool too
                raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); a string "
                                f"such as 'false' would read as True")
            put(name, bool(value))

    def replace(self, **changes: Any) -> MetricConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricConfig:
        """Inverse of `to_dict`; unknown keys are an error naming the valid ones."""
        if not isinstance(d, Mapping):
            raise TypeError(f"MetricConfig.from_dict needs a mapping (what to_dict() returns), got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown metric option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)


def _parse_layers(layers: Any) -> tuple[str | int, ...]:
    """``layers``: one name or index, or a flat sequence of them (names str, indices int)."""
    items = (layers,) if isinstance(layers, (str, int)) else layers
    if isinstance(items, (bool, float)) or not isinstance(items, (Sequence, tuple)) or isinstance(items, bytes):
        raise TypeError(f"layers must be a layer name, an index, or a list of them (e.g. ['stage2', 'stage3'] or "
                        f"[1, 2]), got {layers!r}")
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, (str, int))]
    if bad:
        raise TypeError(f"layers must hold layer names (str) or indices (int), not {bad[0]!r} "
                        f"({type(bad[0]).__name__}); got {layers!r}")
    return tuple(items)


def create_metric(config: MetricConfig | None = None, /, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, **options: Any) -> PerceptualDistance:
    """The factory: a new `PerceptualDistance` from ``config`` and/or keyword ``options``.

    ``create_metric(distance="local")`` == ``create_metric(MetricConfig(distance="local"))``;
    options given beside a config override its fields. Not cached: see `lowps.get_metric` for that.
    """
    from .metric import PerceptualDistance

    if config is not None and not isinstance(config, MetricConfig):
        raise TypeError(f"create_metric's first argument is a MetricConfig, got {config!r}; pass options as keywords, "
                        f"e.g. create_metric(distance={config!r})" if isinstance(config, str) else
                        f"create_metric's first argument is a MetricConfig, got {type(config).__name__}")
    cfg = config or MetricConfig()
    m = PerceptualDistance.from_config(cfg.replace(**options) if options else cfg)
    if device is not None:
        m = m.to(device=device)
    if dtype is not None:
        m = m.to(dtype=dtype)
    return m
