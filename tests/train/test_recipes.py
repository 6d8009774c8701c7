"""Training recipes: lowps's default and the paper's App. M settings, scaled to the epoch budget."""
import pytest

from lowps.train.backbone import RECIPES, TrainConfig, _lr_at, apply_recipe


def test_paper_recipe_is_app_m_scaled_by_fractions():
    cfg = apply_recipe(TrainConfig(epochs=18), "paper")
    assert cfg.batch_size == 1024 and cfg.schedule == "step" and cfg.recipe == "paper"
    assert cfg.warmup_epochs == pytest.approx(18 * 5 / 90)  # 5 of 90 epochs
    total, warm, base = 900, 50, 0.4
    # x0.1 at 1/3, 2/3 and 8/9 of training (epochs 30/60/80 of 90)
    assert _lr_at(299, total, warm, base, "step") == pytest.approx(base)
    assert _lr_at(300, total, warm, base, "step") == pytest.approx(base * 0.1)
    assert _lr_at(600, total, warm, base, "step") == pytest.approx(base * 0.01)
    assert _lr_at(800, total, warm, base, "step") == pytest.approx(base * 0.001)


def test_default_recipe_and_explicit_flags_win():
    cfg = apply_recipe(TrainConfig(epochs=16), "default")
    assert (cfg.batch_size, cfg.schedule, cfg.warmup_epochs) == (256, "cosine", 1.0)
    cfg = TrainConfig(epochs=16, batch_size=128)
    apply_recipe(cfg, "paper", explicit={"batch_size"})
    assert cfg.batch_size == 128 and cfg.schedule == "step"
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe(TrainConfig(), "imagenet")
    assert set(RECIPES) == {"default", "paper"}


def test_init_and_bias_decay_switches(tmp_path):
    import timm
    import torch

    from lowps.train.backbone import TrainConfig, _param_groups, train_backbone
    m = timm.create_model("resnet6", num_classes=10)
    decayed = {id(p) for p in _param_groups(m, 1e-4)[0]["params"]}
    assert id(m.fc.bias) in decayed and id(m.fc.weight) in decayed and id(m.bn1.weight) not in decayed
    decayed = {id(p) for p in _param_groups(m, 1e-4, bias_decay=False)[0]["params"]}
    assert id(m.fc.bias) not in decayed and id(m.fc.weight) in decayed
    assert all(p.ndim > 1 for p in _param_groups(m, 1e-4, bias_decay=False)[0]["params"])
    # kaiming is lowps < 0.2's init; it applies to the TPU ResNets only
    torch.manual_seed(0)
    k = timm.create_model("resnet6", num_classes=10, init="kaiming")
    assert abs(float(k.conv1.weight.detach().std()) - (2 / (64 * 49)) ** 0.5) < 0.1 * (2 / (64 * 49)) ** 0.5
    with pytest.raises(ValueError, match="TPU ResNets.*resnet18"):
        train_backbone(TrainConfig(arch="resnet18", init="kaiming", data="folder:" + str(tmp_path),
                                   out=str(tmp_path / "run")))


def test_crop_label_smoothing_and_width_axes(tmp_path):
    """The paper's sec. 6 axes: no random crop (flips only), label smoothing, narrower ResNet-6."""
    import timm
    import torch

    from lowps.train.backbone import TrainConfig, _augment, train_backbone

    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = _augment(x, 0, torch.Generator().manual_seed(0))
    same = (out == x.float()).flatten(1).all(1)
    flipped = (out == x.float().flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64  # flips only, no shift
    shifted = _augment(x, 2, torch.Generator().manual_seed(0))
    assert not bool(((shifted == x.float()).flatten(1).all(1) | (shifted == x.float().flip(3)).flatten(1).all(1)).all())
    for bad, match in (({"crop_pad": -1}, "crop-pad"), ({"crop_pad": 1.5}, "crop-pad"),
                       ({"label_smoothing": 1.0}, "label-smoothing"), ({"label_smoothing": float("nan")}, "label")):
        with pytest.raises(ValueError, match=match):
            train_backbone(TrainConfig(data="folder:" + str(tmp_path), out=str(tmp_path / "run"), **bad))
    for arch, chans in (("resnet6_w50", [32, 64, 128, 256]), ("resnet6_w25", [16, 32, 64, 128])):
        m = timm.create_model(arch, num_classes=10)
        assert m.conv1.out_channels == chans[0] and m.stage_channels == chans
        assert [f.shape[1] for f in m.forward_stages(torch.rand(1, 3, 64, 64))] == chans
