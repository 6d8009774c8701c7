import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

import lowps
from lowps.backbones import create_backbone
from lowps.backbones.resnet_tpu import SingleConvBlock, separable_max_pool, tf_same_max_pool


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(32, 32), (8, 10), (9, 12), (33, 33), (1, 2), (2, 1)])
def test_tf_same_max_pool_low_precision_path_is_exact(dtype, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *size, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x.float(), 3, 2, padding=(size[0] % 2, size[1] % 2), ceil_mode=True).to(dtype)
    with torch.inference_mode():
        y = tf_same_max_pool(x)
    assert torch.equal(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # unbatched (C, H, W), as max_pool2d takes it
        assert torch.equal(tf_same_max_pool(x[1].contiguous()), ref[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("size", [(32, 32), (33, 33), (8, 11), (11, 8), (1, 1), (2, 2), (3, 4)])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_separable_max_pool_equals_tf_same_max_pool(dtype, size, layout):
    # The stem's inference pool: exact (a max), in the input's layout, also into given out/scratch buffers
    # (the sub-batch loop writes each sub-batch's rows of one output); negative maps check that TF's
    # padding never wins.
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 4, *size, generator=g) - 1).to(dtype)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    ref = F.max_pool2d(x.double(), 3, 2, padding=(size[0] % 2, size[1] % 2), ceil_mode=True).to(dtype)
    y = separable_max_pool(x)
    assert torch.equal(y, ref) and y.is_contiguous(memory_format=fmt)
    out = torch.full((5, *ref.shape[1:]), 7.0, dtype=dtype).contiguous(memory_format=fmt)
    separable_max_pool(x, out[1:4], torch.empty(3, 4, ref.shape[2], size[1], dtype=dtype))
    assert torch.equal(out[1:4], ref) and (out[0] == 7).all() and (out[4] == 7).all()


@pytest.mark.parametrize("keep_indices", [False, True])
def test_stem_pool_keeps_one_sub_batch_conv_output_alive(keep_indices):
    # The stem's conv output is the network's largest activation: holding the first sub-batch's through
    # the loop (as an argument did) raised inference's peak at 64x64/32 from 13.0 to 19.7 MiB.
    import weakref

    from lowps.backbones.resnet_tpu import _pool_sub_batches

    x = torch.randn(7, 4, 10, 12, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    made: list[weakref.ref] = []

    def conv(i):
        assert all(r() is None for r in made), f"a previous sub-batch's conv output is still alive at image {i}"
        y = x[i:i + 3].clone(memory_format=torch.channels_last)
        made.append(weakref.ref(y))
        return y
    out, idx = _pool_sub_batches(conv, 7, 3, keep_indices=keep_indices)
    assert len(made) == 3 and (idx is not None) == keep_indices
    assert torch.equal(out, tf_same_max_pool(x).relu())
    # off CPU (here: the meta device, shapes only) inference pools with the max-pool kernel per
    # sub-batch and a scratch for its indices, one launch per sub-batch instead of four
    xm = torch.empty(7, 4, 10, 12, device="meta").contiguous(memory_format=torch.channels_last)
    om, im = _pool_sub_batches(lambda i: xm[i:i + 3], 7, 3, keep_indices=keep_indices)
    assert om.shape == out.shape and om.is_contiguous(memory_format=torch.channels_last)
    assert (im is not None) == keep_indices


@pytest.mark.parametrize("arch", ["resnet6", "resnet10"])
def test_stem_sub_batches_at_inference_are_exact(arch):
    model = timm.create_model(arch, num_classes=0).eval()
    x = torch.randn(5, 3, 40, 48)
    with torch.no_grad():
        ref = model.forward_stages(x)
        model.stem_chunk_pixels = 2 * 40 * 48  # sub-batches of 2, 2, 1
        got = model.forward_stages(x)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, ref))  # conv algo may differ by batch
    with torch.enable_grad():  # with autograd the stem runs whole (nothing to save by splitting)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.forward_stages(x), ref))


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 33), (40, 31), (17, 16), (100, 23)])
def test_stem_row_bands_for_large_images_are_exact(size):
    # When one image's stem output exceeds stem_chunk_pixels, the stem runs in bands of pooled rows,
    # each from only the input rows it depends on (the conv's zero padding and the pool's TF "SAME"
    # padding applied only where a band meets the border). Every band height, odd and even sizes.
    model = timm.create_model("resnet6", num_classes=0).eval()
    h, w = size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        model.stem_chunk_pixels = 10 ** 9
        ref = model._stem(x)
        for bound in (1, 4 * w, 8 * w, 12 * w + 1, h * w - 1):  # 1, 1, 2, 3 ... pooled rows per band
            model.stem_chunk_pixels = bound
            got = model._stem(x)
            assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-5, atol=1e-6), bound
        model.stem_chunk_pixels = 8 * w
        full = model.forward_stages(x)
    model.stem_chunk_pixels = 10 ** 9
    with torch.no_grad():
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(full, model.forward_stages(x)))


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    # Relative to the largest value: deep random nets reach large activations.
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max())


def _with_random_bn_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Fresh BNs are identities (and zero-gamma branches vanish): give every BN non-trivial statistics.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean = 0.2 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet6", "resnet10"])
@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_fuse_folds_bn_and_merges_single_conv_shortcuts_exactly(arch, size):
    ref_model = _with_random_bn_statistics(timm.create_model(arch, num_classes=0))
    fused = copy.deepcopy(ref_model).fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    if arch == "resnet6":  # every block is one conv + ReLU now
        assert all(block.shortcut is None for stage in fused.stages for block in stage)
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    ref, got = ref_model.forward_stages(x), fused.forward_stages(x)
    assert all(_close(a, b) for a, b in zip(got, ref))
    # Input gradients (the metric as a training loss) agree too. In float64: in float32 a
    # pre-activation within rounding of 0 can land on the other side of a ReLU, which moves the
    # gradient locally (by design of ReLU, not of the fusion).
    ref_model.double()
    fused = copy.deepcopy(ref_model).fuse()
    x = x.detach().double().requires_grad_()
    g_ref, = torch.autograd.grad(sum(f.square().mean() for f in ref_model.forward_stages(x)), x)
    g_got, = torch.autograd.grad(sum(f.square().mean() for f in fused.forward_stages(x)), x)
    assert _close(g_got, g_ref, rel=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_merge_identity_and_projection_shortcuts(stride):
    for project in ([True] if stride == 2 else [True, False]):
        block = _with_random_bn_statistics(SingleConvBlock(8, 8, stride, project=project))
        for m in block.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.3)
        x = torch.randn(2, 8, 9, 10)
        with torch.no_grad():
            ref = block(x)
        # Fold BN by hand so the block is tested on its own.
        block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), torch.nn.Identity()
        if project:
            block.shortcut[0] = fuse_conv_bn_eval(block.shortcut[0], block.shortcut[1])
            block.shortcut[1] = torch.nn.Identity()
        block.merge_shortcut()
        with torch.no_grad():
            assert torch.allclose(block(x), ref, rtol=1e-5, atol=1e-5)


def test_merge_shortcut_before_folding_bn_is_an_error():
    with pytest.raises(RuntimeError, match="BatchNorm folded first"):
        SingleConvBlock(4, 8, 2, project=True).eval().merge_shortcut()


def test_small_map_nchw_path_matches_channels_last_and_tracks_weight_changes():
    model = _with_random_bn_statistics(timm.create_model("resnet6", num_classes=0)).fuse()
    model.requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    last = model.stages[-1][0]
    for stage in model.stages:
        stage[0].small_map_nchw = True  # on any CPU (the default takes it on AVX-512 CPUs only)
    with torch.no_grad():
        fast = model.forward_stages(x)
        assert hasattr(last, "_nchw_weight")  # the 4x4 -> 2x2 conv took the NCHW path
        for stage in model.stages:
            stage[0].small_map_pixels = 0
        ref = model.forward_stages(x)
        for a, b in zip(fast, ref):
            assert _close(a, b)
        for stage in model.stages:
            stage[0].small_map_pixels = 64
        last.conv1.weight.mul_(2)  # an in-place edit must not be served from the stale copy
        edited = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].small_map_pixels = 0
        assert _close(edited, model.forward_stages(x)[-1])
        assert not _close(edited, fast[-1])


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


def _fused_resnet6(dtype=torch.float64):
    model = _with_random_bn_statistics(timm.create_model("resnet6", num_classes=0)).fuse()
    return model.requires_grad_(False).to(dtype=dtype, memory_format=torch.channels_last)


@pytest.mark.parametrize("conv", ["direct", "width_im2col"])
@pytest.mark.parametrize("mode", ["polyphase", "native"])
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64)])
def test_loss_stem_gradients_equal_autograd_through_the_plain_ops(mode, conv, size):
    # The loss path's stem (_LossStem: sub-batches, pool indices only, polyphase or native input
    # gradient, direct or column-unrolled conv) against plain autograd, in float64 (so ReLU kinks
    # cannot differ), odd and even sizes, with sub-batches of 2 images, and through a nonlinear
    # function of the features.
    model = _fused_resnet6()
    model.stem_conv = conv
    model.stem_chunk_pixels = 2 * size[0] * size[1]
    x0 = torch.rand(5, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x0 = x0.contiguous(memory_format=torch.channels_last)
    out = {}
    for m in (mode, "autograd"):
        model.stem_input_grad = m
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in feats)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum(), x)
        out[m] = ([f.detach() for f in feats], g.detach(), gg)
    (f_fast, g_fast, gg_fast), (f_ref, g_ref, gg_ref) = out[mode], out["autograd"]
    assert all(_close(a, b, rel=1e-12) for a, b in zip(f_fast, f_ref))
    assert _close(g_fast, g_ref, rel=1e-9) and g_ref.abs().max() > 0
    assert _close(gg_fast, gg_ref, rel=1e-9) and gg_ref.abs().max() > 0  # double backward (gradient penalties)
    # A first-order backward (no create_graph) writes the sub-batches' input gradients straight into one
    # NCHW tensor, the layout callers' images mostly have, instead of concatenating them channels_last.
    model.stem_input_grad = mode
    x = x0.clone().requires_grad_()
    stem = model._stem(x)
    assert type(stem.grad_fn).__name__ == "_LossStemBackward"
    g1, = torch.autograd.grad((stem * torch.linspace(-1, 1, stem.numel(), dtype=stem.dtype).view_as(stem)).sum(), x)
    plain = tf_same_max_pool(model.bn1(model.conv1(x))).relu()
    g1_ref, = torch.autograd.grad((plain * torch.linspace(-1, 1, stem.numel(), dtype=stem.dtype).view_as(stem)).sum(), x)
    assert g1.is_contiguous() and _close(g1, g1_ref, rel=1e-9) and g1_ref.abs().max() > 0


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64), (16, 16), (17, 23)])
def test_loss_gemm_input_grad_equals_autograd(size):
    # Merged blocks on small maps (_LossConvReLU: one matrix product + strided adds for the input
    # gradient) against oneDNN/autograd, in float64, with double backward; which blocks take it depends
    # on the map sizes (64x64: stage 4 only; 37x50: stage 4's 3x4 input; 16x16, the smallest input:
    # stages 2-4, down to a 1x1 map).
    model = _fused_resnet6()
    x0 = torch.rand(3, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = x0.contiguous(memory_format=torch.channels_last)
    out = {}
    for mode in ("gemm", "autograd"):
        for stage in model.stages:
            stage[0].loss_input_grad = mode
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        if mode == "gemm":
            assert type(feats[-1].grad_fn).__name__ == "_LossConvReLUBackward"
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in feats)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum(), x)
        out[mode] = ([f.detach() for f in feats], g.detach(), gg)
    (f_fast, g_fast, gg_fast), (f_ref, g_ref, gg_ref) = out["gemm"], out["autograd"]
    assert all(_close(a, b, rel=1e-12) for a, b in zip(f_fast, f_ref))
    assert _close(g_fast, g_ref, rel=1e-9) and g_ref.abs().max() > 0
    assert _close(gg_fast, gg_ref, rel=1e-9) and gg_ref.abs().max() > 0


@pytest.mark.parametrize("k, stride, padding, size", [(3, 2, 1, (4, 4)), (3, 2, 1, (5, 7)), (3, 1, 1, (3, 3)),
                                                      (3, 2, 1, (1, 1)), (1, 2, 0, (6, 5)), (5, 3, 2, (7, 4))])
def test_gemm_input_grad_equals_the_conv_gradient(k, stride, padding, size):
    from lowps.backbones.resnet_tpu import _gemm_input_grad
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, *size, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(6, 4, k, k, dtype=torch.float64, generator=gen)
    y = F.conv2d(x, w, None, stride, padding)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    ref, = torch.autograd.grad(y, x, g)
    got = _gemm_input_grad(g, w, size, stride, padding)
    assert got.shape == ref.shape and _close(got, ref, rel=1e-12) and ref.abs().max() > 0


def test_loss_gemm_input_grad_gating_and_float32():
    model = _fused_resnet6(torch.float32)
    last = model.stages[-1][0]
    x = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    feats_in = torch.rand(4, 256, 4, 4).contiguous(memory_format=torch.channels_last)
    last.loss_input_grad = "gemm"
    assert not last._gemm_grad_applies(feats_in)  # no gradient wanted
    assert last._gemm_grad_applies(feats_in.clone().requires_grad_())
    with torch.autocast("cpu", torch.bfloat16):
        assert not last._gemm_grad_applies(feats_in.clone().requires_grad_())
    assert not model.stages[0][0]._gemm_grad_applies(torch.rand(1, 64, 16, 16, requires_grad=True))  # large map
    grads = {}
    for mode in ("gemm", "autograd"):
        last.loss_input_grad = mode
        xx = x.clone().requires_grad_()
        model.forward_stages(xx)[-1].sum().backward()
        grads[mode] = xx.grad
    # float32: another summation order; a ReLU kink may flip, so compare in norm
    assert (grads["gemm"] - grads["autograd"]).norm() <= 1e-4 * grads["autograd"].norm()
    last.loss_input_grad = "bogus"
    with pytest.raises(ValueError, match="loss_input_grad"):
        model.forward_stages(x.clone().requires_grad_())


def test_loss_stem_applies_only_where_it_is_exact_and_float32_agrees():
    model = _fused_resnet6(torch.float32)
    x = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert not model._loss_stem_applies(x)  # no gradient wanted
    xg = x.clone().requires_grad_()
    assert model._loss_stem_applies(xg)
    with torch.autocast("cpu", torch.bfloat16):
        assert not model._loss_stem_applies(xg)  # the autocast dtype would change under it
    grads = {}
    for mode in ("polyphase", "native", "autograd"):
        model.stem_input_grad = mode
        xx = x.clone().requires_grad_()
        model.forward_stages(xx)[-1].sum().backward()
        grads[mode] = xx.grad
    # float32: the same sums in another order (~1e-6 relative); a pre-activation within rounding of a
    # ReLU kink may flip, so compare in norm rather than elementwise
    for mode in ("polyphase", "native"):
        assert (grads[mode] - grads["autograd"]).norm() <= 1e-4 * grads["autograd"].norm()
    model.stem_input_grad = "bogus"
    with pytest.raises(ValueError, match="stem_input_grad"):
        model.forward_stages(xg)
    model.stem_input_grad, model.stem_conv = "auto", "bogus"
    with pytest.raises(ValueError, match="stem_conv"):
        model.forward_stages(x)


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64), (8, 9)])
def test_width_im2col_stem_equals_the_direct_conv_at_inference(size):
    # No autograd: whole batch, sub-batches of 2 images, float64 and float32, against the 7x7 conv.
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        model = _fused_resnet6(dtype)
        x = torch.rand(5, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(3))
        x = x.contiguous(memory_format=torch.channels_last)
        out = {}
        for conv in ("direct", "width_im2col"):
            model.stem_conv = conv
            for pixels in (2 ** 16, 2 * size[0] * size[1]):
                model.stem_chunk_pixels = pixels
                with torch.no_grad():
                    out[conv, pixels] = model.forward_stages(x)
        ref = out["direct", 2 ** 16]
        for key, feats in out.items():
            assert all(_close(a, b, rel=rel) for a, b in zip(feats, ref)), key


@pytest.mark.parametrize("vendor, avx512, expected", [("GenuineIntel", True, True), ("AuthenticAMD", True, False),
                                                      ("GenuineIntel", False, False), ("", True, False)])
def test_loss_gemm_input_grad_auto_is_for_intel_avx512(monkeypatch, vendor, avx512, expected):
    # "auto" takes the matrix product only where it was measured faster than oneDNN's kernel: Intel
    # AVX-512 (2.2 vs 4.7 ms); on an AMD EPYC with AVX-512 it was slower (2.6 vs 2.3-2.5 ms).
    from lowps.backbones import resnet_tpu as rt
    monkeypatch.setattr(rt, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(rt, "native_avx512", lambda: avx512)
    last = _fused_resnet6(torch.float32).stages[-1][0]
    assert last.loss_input_grad == "auto"
    assert last._gemm_grad_applies(torch.rand(2, 256, 4, 4, requires_grad=True)) is expected
    last.loss_input_grad = "gemm"  # an explicit choice holds on every CPU
    assert last._gemm_grad_applies(torch.rand(2, 256, 4, 4, requires_grad=True))


@pytest.mark.parametrize("vendor, avx512, packed, expected", [
    ("GenuineIntel", True, True, True), ("GenuineIntel", True, False, True), ("AuthenticAMD", True, True, False),
    ("AuthenticAMD", True, False, True), ("AuthenticAMD", False, True, False), ("GenuineIntel", False, False, False)])
def test_small_map_nchw_auto_by_vendor_isa_and_packed_weights(monkeypatch, vendor, avx512, packed, expected):
    # "auto" runs small maps NCHW on AVX-512 CPUs, except AMD ones where the prepacked channels_last
    # conv applies: measured faster there in every case (loss 1.06-1.17x, one pair 1.21x, less memory).
    from lowps.backbones import resnet_tpu as rt
    monkeypatch.setattr(rt, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(rt, "native_avx512", lambda: avx512)
    monkeypatch.setattr(rt, "_packed_ops_work", lambda: True)
    last = _fused_resnet6(torch.float32).stages[-1][0]
    last.packed_weights = packed
    small = torch.rand(2, 256, 4, 4).contiguous(memory_format=torch.channels_last)
    assert last.small_map_nchw is None and last._small_map_nchw(small) is expected
    assert last._packed_applies(small) is (packed and not expected)  # exactly one path per call
    with torch.autocast("cpu", dtype=torch.bfloat16):  # no packed conv under autocast: NCHW on any AVX-512 CPU
        assert last._small_map_nchw(small) is avx512
    big = torch.rand(2, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    last.small_map_pixels = 64
    assert last._small_map_nchw(big) is False  # only maps of at most small_map_pixels
    for choice in (True, False):  # an explicit choice holds on every CPU
        last.small_map_nchw = choice
        assert last._small_map_nchw(small) is choice


def test_loss_gradients_reach_the_relu_masks_in_the_activations_layout(monkeypatch):
    # A stage output's gradient is the head's plus the next stage's input gradient, which is NCHW where
    # that stage runs NCHW (small maps on AVX-512). It is converted back to the channels_last layout of
    # the saved activation before the ReLU mask and the conv's backward (mixed layouts take slow
    # strided loops); values are unchanged.
    from lowps.backbones import resnet_tpu as rt
    monkeypatch.setattr(rt.SingleConvBlock, "small_map_nchw", True)  # stages 3-4 at 64x64 run NCHW
    model = _fused_resnet6(torch.float32)
    x0 = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    x0 = x0.contiguous(memory_format=torch.channels_last)

    def channels_last(t: torch.Tensor) -> bool:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    def run() -> tuple[torch.Tensor, list[bool], list[bool]]:
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        seen: dict[int, torch.Tensor] = {}
        for i, f in enumerate(feats[:2]):  # hooks after lowps's: they see what the ReLU mask gets
            f.register_hook(lambda g, i=i: seen.__setitem__(i, g))
        sum((f.mean((2, 3)) * torch.linspace(-1, 1, f.shape[1])).square().sum() for f in feats).backward()
        assert x.grad is not None
        return x.grad, [channels_last(f) for f in feats[:2]], [channels_last(seen[i]) for i in range(2)]

    grad, fwd, bwd = run()
    assert fwd == [True, True] and bwd == [True, True]
    monkeypatch.setattr(rt, "_grad_in_forward_layout", lambda t: t)
    grad_plain, _, bwd_plain = run()
    assert bwd_plain != [True, True]  # what the conversion fixes
    assert _close(grad, grad_plain, rel=1e-5) and grad.abs().max() > 0


def _packed_used(model) -> list[bool]:
    from lowps.backbones.resnet_tpu import SingleConvBlock
    return ["conv" in b._packed for b in model.modules() if isinstance(b, SingleConvBlock)]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (16, 16)])
def test_packed_weight_convs_equal_the_plain_convs(size):
    # Merged blocks on CPU in float32 run conv + ReLU on a weight prepacked in oneDNN's layout (and the
    # loss path's input gradient as the packed transposed conv): the same kernels as F.conv2d and its
    # backward, so values agree to float32 rounding (1e-5 of the largest; a kernel may differ per
    # machine), gradients in norm (a pre-activation at a ReLU kink may flip), double backward included.
    model = _fused_resnet6(torch.float32)
    for stage in model.stages:  # every block on this path, whatever this CPU's automatic choices
        stage[0].small_map_nchw, stage[0].loss_input_grad = False, "autograd"
    gen = torch.Generator().manual_seed(8)
    x0 = torch.rand(3, 3, *size, generator=gen).contiguous(memory_format=torch.channels_last)
    out = {}
    for packed in (True, False):
        for stage in model.stages:
            stage[0].packed_weights, stage[0]._packed = packed, {}
        with torch.no_grad():
            feats = model.forward_stages(x0)
        x = x0.clone().requires_grad_()
        tracked = model.forward_stages(x)
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in tracked)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel()).view_as(g)).sum(), x)
        x = x0.clone().requires_grad_()
        sum(f.sum() for f in model.forward_stages(x)).backward()
        out[packed] = (feats, [f.detach() for f in tracked], g.detach(), gg, x.grad)
        assert all(_packed_used(model)) if packed else not any(_packed_used(model))
        assert all("grad" in st[0]._packed for st in model.stages) is packed  # the loss path's gradient
    (f_p, t_p, g_p, gg_p, xg_p), (f_r, t_r, g_r, gg_r, xg_r) = out[True], out[False]
    assert all(_close(a, b) for a, b in zip(f_p + t_p, f_r + t_r))
    for a, b in ((g_p, g_r), (gg_p, gg_r), (xg_p, xg_r)):
        assert (a - b).norm() <= 1e-4 * b.norm() and b.abs().max() > 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def test_packed_weights_follow_weight_edits_and_are_not_serialised():
    import copy
    import io
    model = _fused_resnet6(torch.float32)
    for stage in model.stages:
        stage[0].small_map_nchw = False
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = model.forward_stages(x)[-1]
        assert all(_packed_used(model))
        last = model.stages[-1][0]
        last.conv1.weight.mul_(2.0)  # in place: a new version, so the packed copy is remade
        last.conv1.bias.mul_(2.0)
        after = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].packed_weights = False
        plain = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].packed_weights = True
    assert _close(after, plain) and not _close(after, before)
    # copies and pickles carry no opaque oneDNN tensor, and give the same values
    clone = copy.deepcopy(model)
    assert not any(_packed_used(clone))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert _close(clone.forward_stages(x)[-1], after) and _close(loaded.forward_stages(x)[-1], after)
    model.to(torch.float64)  # .to() drops the cache; float64 takes the plain convs
    assert not any(_packed_used(model))
    with torch.no_grad():
        assert _close(model.forward_stages(x.double())[-1], after.double(), rel=1e-5)
    assert not any(_packed_used(model))


def test_packed_weights_step_aside_where_the_ops_are_missing_or_counted(monkeypatch):
    # A PyTorch without working prepacked ops (checked once, `_packed_ops_work`) and calls under a
    # dispatch mode (FlopCounterMode counts aten convs) take the plain convs, with the same values.
    from torch.utils.flop_counter import FlopCounterMode

    from lowps.backbones import resnet_tpu as rt
    model = _fused_resnet6(torch.float32)
    for stage in model.stages:
        stage[0].small_map_nchw = False
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ref = model.forward_stages(x)[-1]
    assert not any(_packed_used(model))
    assert counter.get_total_flops() == 2 * 2 * 33_226_752  # every conv of ResNet-6, counted
    monkeypatch.setattr(rt, "_packed_ops_work", lambda: False)
    with torch.no_grad():
        assert _close(model.forward_stages(x)[-1], ref)
    assert not any(_packed_used(model))
