"""MetricConfig is the one place for the metric's options: module, factory, cache, scorer and CLI read it."""
import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

import lowps
from lowps.cli import build_parser, build_score_parser
from lowps.cli._common import metric_fields
from lowps.config import DISTANCES, PRECISIONS, STYLE_NORMS, MetricConfig, create_metric

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_configs_normalise_so_equal_options_are_equal_keys():
    a = MetricConfig(weights=Path("w.safetensors"), layers=["stage1", 2], input_range="-1,1")
    b = MetricConfig(weights="w.safetensors", layers=("stage1", 2), input_range=(-1, 1))
    assert a == b and hash(a) == hash(b)
    assert a.input_range == (-1.0, 1.0) and a.layers == ("stage1", 2)
    assert MetricConfig(layers="stage1").layers == ("stage1",)
    assert MetricConfig.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("field,value,expect", [
    ("distance", "mean", "choose one of structure, local, meanpool, style, linear"),
    ("precision", "int8", "choose one of fp32, bf16, fp16"),
    ("style_norm", "c", "choose one of hw, none"),
])
def test_bad_choices_name_the_choices(field, value, expect):
    with pytest.raises(ValueError, match=expect):
        MetricConfig(**{field: value})


def test_other_bad_options():
    with pytest.raises(ValueError, match="style_norm='none' applies only to distance='style'"):
        MetricConfig(style_norm="none")
    with pytest.raises(TypeError, match="weights must be a string"):
        MetricConfig(weights=["a", "b"])
    with pytest.raises(ValueError, match="unknown metric option.*bogus"):
        MetricConfig.from_dict({"bogus": 1})


def test_registries_match_the_config_choices():
    from lowps.heads import HEADS, StyleHead
    from lowps.metric import _PRECISIONS
    assert set(HEADS) == set(DISTANCES)
    assert tuple(_PRECISIONS) == PRECISIONS
    assert StyleHead.NORMS == STYLE_NORMS


def test_factory_module_and_functional_agree():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = MetricConfig(distance="local", layers=("stage1", "stage2"))
    m = create_metric(cfg)
    assert m.config == cfg
    ref = lowps.PerceptualDistance(distance="local", layers=["stage1", "stage2"])
    assert torch.equal(m(x, y), ref(x, y))
    assert create_metric(distance="local", layers=["stage1", "stage2"]).config == cfg
    assert create_metric(cfg, distance="meanpool").config == cfg.replace(distance="meanpool")
    assert lowps.PerceptualDistance.from_config(cfg).config == cfg
    # the cache is keyed by the config: keywords and config= give the same object
    assert lowps.get_metric(config=cfg) is lowps.get_metric(distance="local", layers=("stage1", "stage2"))
    assert torch.equal(lowps.distance(x, y, config=cfg), m(x, y))
    with pytest.raises(ValueError, match="either as config= or as keywords.*distance"):
        lowps.distance(x, y, config=cfg, distance="style")


def _options(parser: argparse.ArgumentParser, *path: str) -> dict[str, argparse.Action]:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {a.dest: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("path", [("distance",), ("dirs",), ("allpairs",), ("export",), ("sanity",), ()])
def test_cli_flags_are_derived_from_the_config(path):
    opts = _options(build_parser(), *path) if path else _options(build_score_parser())
    skipped = {"export": {"precision", "force_precision"}, "sanity": {"weights"}}.get(path[0] if path else "", set())
    for f in metric_fields():
        if f.name in skipped:
            continue
        action = opts[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        choices = f.metadata["cli"].get("choices")
        if choices:
            assert list(action.choices) == list(choices)
        default = action.default[0] if isinstance(action.default, list) else action.default
        assert default == (f.default if f.type not in (bool, "bool") else False)
    # fields that are not flags: files are read into [0, 1] and always checked
    assert "input_range" not in opts and "check_inputs" not in opts


def test_style_norm_reaches_the_metric_from_the_cli(capsys):
    from lowps.cli import main
    a, b = str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png")
    assert main(["distance", a, b, "--distance", "style", "--style-norm", "none"]) == 0
    got = float(capsys.readouterr().out)
    want = float(lowps.distance(a, b, distance="style", style_norm="none")[0])
    assert got == pytest.approx(want, rel=1e-5)  # printed with 6 significant digits
    assert main(["distance", a, b, "--style-norm", "none"]) == 2
    assert "--style-norm 'none' applies only to --distance 'style'" in capsys.readouterr().err


def test_every_field_is_documented_in_the_module_docstring():
    doc = lowps.PerceptualDistance.__doc__
    for f in dataclasses.fields(MetricConfig):
        assert f"{f.name}:" in doc, f.name
