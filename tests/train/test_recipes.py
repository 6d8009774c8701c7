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
