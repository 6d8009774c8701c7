
import pytest
import timm
import torch

import lowps
from lowps.backbones import create_backbone
from lowps.backbones.resnet_tpu import tf_same_max_pool


def test_resnet6_parameter_count_and_feature_shapes():
    model = timm.create_model("resnet6", num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == 1_774_656
    feats = create_backbone("resnet6")(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_resnet6_structure_single_conv_blocks_with_projection_everywhere():
    model = timm.create_model("resnet6")
    assert len(model.stages) == 4
    for stage in model.stages:
        assert len(stage) == 1
        block = stage[0]
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(3, 3), (1, 1)]  # main 3x3, projection 1x1
        assert float(block.bn1.weight.detach().abs().sum()) == 0.0  # gamma initialised to zero
    assert model.bn1.eps == 1e-5 and model.bn1.momentum == 0.1


@pytest.mark.parametrize("name,blocks", [("resnet10", 1), ("resnet18_tpu", 2), ("resnet50_tpu", 3)])
def test_tpu_resnets_project_on_every_stage(name, blocks):
    model = timm.create_model(name, num_classes=0)
    assert len(model.stages[0]) == blocks
    for stage in model.stages:
        assert not isinstance(stage[0].shortcut, torch.nn.Identity)


def test_resnet200_layout():
    model = timm.create_model("resnet200_tpu", num_classes=0)
    assert [len(s) for s in model.stages] == [3, 24, 36, 3]


def test_tf_same_max_pool_pads_after_for_even_sizes():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = tf_same_max_pool(x)
    # TF SAME with k=3, s=2 on 4: pad 0 before, 1 after -> windows start at 0 and 2.
    assert y.shape == (1, 1, 2, 2)
    assert y.flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    # PyTorch's symmetric padding=1 would give a different top-left value
    torch_pool = torch.nn.functional.max_pool2d(x, 3, 2, padding=1)
    assert torch_pool.flatten().tolist()[0] == 5.0
    # odd size: symmetric padding, padded cells never win even for negative inputs
    z = -torch.ones(1, 1, 5, 5)
    assert torch.equal(tf_same_max_pool(z), -torch.ones(1, 1, 3, 3))


def test_vit_taps_are_cls_tokens_per_block():
    bb = create_backbone("vit_base_patch8_64")
    feats = bb(torch.rand(2, 3, 64, 64))
    assert len(feats) == 12 and bb.layer_names[0] == "block0"
    assert all(tuple(f.shape) == (2, 768, 1, 1) for f in feats)


def test_vit_large_patch4_64_config():
    model = timm.create_model("vit_large_patch4_64")
    assert model.patch_embed.patch_size == (4, 4) and len(model.blocks) == 24 and model.embed_dim == 1024


def test_timm_cnn_taps_at_strides_4_to_32():
    bb = create_backbone("timm:resnet18")
    assert [layer.reduction for layer in bb.layers] == [4, 8, 16, 32]
    feats = bb(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_any_timm_vit_by_name():
    bb = create_backbone("timm:vit_tiny_patch16_224")
    assert bb.kind == "cls" and bb.fixed_size == (224, 224)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ValueError, match="resnet6"):
        create_backbone("resnet_does_not_exist")


def test_random_init_is_seeded():
    a = create_backbone("resnet6").state_dict()
    b = create_backbone("resnet6").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_list_backbones():
    assert "resnet6" in lowps.list_backbones()


@pytest.mark.parametrize("arch", ["resnet6", "resnet18_tpu"])
def test_random_init_follows_the_tpu_code(arch):
    # TF variance_scaling_initializer(): fan-in, truncated at 2 std, sample std sqrt(1 / fan_in)
    bb = create_backbone(arch, num_classes=10, seed=0)
    convs = [m for m in bb.model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        w = conv.weight.detach()
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        target = (1 / fan_in) ** 0.5
        if w.numel() >= 1000:  # enough samples for a 10% check of the std
            assert abs(w.std().item() / target - 1) < 0.1, (conv, w.std().item(), target)
        assert w.abs().max().item() <= 2 * target / 0.87962566103423978 + 1e-7  # truncated at 2 (rescaled) std
    stem = bb.model.conv1.weight
    assert abs(stem.std().item() - 0.0825) < 0.008
    assert abs(bb.model.fc.weight.std().item() - 0.01) < 0.002 and bb.model.fc.bias.abs().max() == 0


def test_random_init_is_thread_safe_and_leaves_the_global_rng_alone():
    import threading
    serial = create_backbone("resnet6", seed=0).model.conv1.weight.detach().clone()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    out = [None] * 8

    def build(k):
        out[k] = create_backbone("resnet6", seed=0).model.conv1.weight.detach().clone()
    threads = [threading.Thread(target=build, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(w, serial) for w in out)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is unchanged


def test_classifier_bias_is_weight_decayed_as_in_the_tpu_code():
    from lowps.train.backbone import _param_groups
    model = create_backbone("resnet6", num_classes=5).model
    decay, no_decay = _param_groups(model, 1e-4)
    assert any(p is model.fc.bias for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"]) and any(p is model.bn1.weight for p in no_decay["params"])


def test_timm_contract_features_only_pretrained_tags_and_unknown_kwargs():
    import lowps
    fx = timm.create_model("resnet6", features_only=True)
    maps = fx(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert fx.feature_info.channels() == [64, 128, 256, 512] and fx.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(TypeError, match="bogus"):
        timm.create_model("resnet6", bogus=1)
    tagged = timm.create_model("resnet6.tiny_s1250", pretrained=True)  # the shipped file, offline
    assert tagged.pretrained_cfg["input_size"] == (3, 64, 64) and tagged.num_classes == 202
    ref = lowps.weights.build_backbone("resnet6", "resnet6-tiny-s1250").model
    assert torch.equal(tagged.conv1.weight, ref.conv1.weight)
    for name in ("resnet6.tiny_s100", "resnet10.tiny_s5910", "resnet18_tpu.tiny_s3940"):
        assert name in timm.list_pretrained(name.split(".")[0] + "*")
    final, inter = tagged.forward_intermediates(torch.rand(1, 3, 64, 64), indices=[1, 3])
    assert [t.shape[1] for t in inter] == [128, 512] and final.shape == (1, 512, 2, 2)


def test_offline_timm_hub_weights_fail_fast(monkeypatch):
    import time

    import lowps
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-lowps-test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(lowps.weights.OfflineError, match="LOWPS_OFFLINE is set"):
        lowps.PerceptualDistance(backbone="timm:resnet18", weights="timm")
    assert time.monotonic() - start < 30


def test_the_reference_network_is_plain_pytorch():
    """Issue #36: the paper's network reads on its own: no custom autograd Function, no CPU vendor or
    ISA rule, no allocator code, no cached weight copies, at most 300 lines (fast paths: lowps.accel)."""
    import ast
    import inspect

    from lowps.backbones import resnet_tpu

    src = inspect.getsource(resnet_tpu)
    assert len(src.splitlines()) <= 300
    for banned in ("autograd.Function", "cpu_vendor", "avx", "malloc", "ctypes", "mkldnn", "_packed", "accel"):
        assert banned not in src.replace("`lowps.accel`", ""), banned
    imported = {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    assert imported <= {"annotations", "Sequence", "torch", "torch.nn.functional", "feature_take_indices", "nn"}, imported
