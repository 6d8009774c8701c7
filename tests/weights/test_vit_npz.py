"""ViT checkpoints in the vit_jax/big_vision .npz layout, through timm's own loader (issue #35)."""
import numpy as np
import pytest
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

import lowps
from lowps.weights import WeightsError
from lowps.weights.vit_npz import convert_vit_npz


@register_model
def vit_lowps_test_tiny_64(pretrained=False, **kwargs):
    """A 2-block, width-32 ViT at 64x64 (patch 8): the paper's ViT layout at test size."""
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None), kwargs.pop("cache_dir", None)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, **kwargs)


def _to_vit_jax(model):
    """The vit_jax .npz arrays of a timm ViT: the layout the paper's ViT checkpoints use."""
    t = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    out = {"embedding/kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": t["patch_embed.proj.bias"], "cls": t["cls_token"],
           "Transformer/posembed_input/pos_embedding": t["pos_embed"],
           "Transformer/encoder_norm/scale": t["norm.weight"], "Transformer/encoder_norm/bias": t["norm.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = t[b + "norm1.weight"], t[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = t[b + "norm2.weight"], t[b + "norm2.bias"]
        qkv_w, qkv_b = t[b + "attn.qkv.weight"], t[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, heads, -1)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(heads, -1)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = t[b + "attn.proj.weight"].T.reshape(heads, -1, d)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = t[b + "attn.proj.bias"]
        for j in (0, 1):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = t[b + f"mlp.fc{j + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = t[b + f"mlp.fc{j + 1}.bias"]
    return out


def test_npz_checkpoint_converts_and_loads_as_weights(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = timm.create_model("vit_lowps_test_tiny_64", num_classes=0)
    npz = tmp_path / "checkpoint_1000.npz"
    np.savez(npz, **_to_vit_jax(ref))
    out = tmp_path / "vit.safetensors"
    convert_vit_npz(npz, "vit_lowps_test_tiny_64", out)
    state = lowps.weights.load_state_dict(out)[0]
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6, msg=k)
    m = lowps.PerceptualDistance("vit_lowps_test_tiny_64", weights=str(npz))  # a local .npz as weights=
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    want = lowps.PerceptualDistance("vit_lowps_test_tiny_64", weights=str(out))(x, y)
    torch.testing.assert_close(m(x, y), want)
    assert m.backbone.weights_name == str(npz)


def test_wrong_npz_is_a_weights_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"embedding/kernel": np.zeros((8, 8, 3, 7), np.float32)})
    with pytest.raises(WeightsError, match="does not load into"):
        convert_vit_npz(bad, "vit_lowps_test_tiny_64", tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="VisionTransformer"):
        convert_vit_npz(bad, "resnet6", tmp_path / "x.safetensors")


def test_npz_from_a_bucket(tmp_path, monkeypatch):
    from gcs_fake import FakeGCS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ref = timm.create_model("vit_lowps_test_tiny_64", num_classes=0)
    npz = tmp_path / "c.npz"
    np.savez(npz, **_to_vit_jax(ref))
    monkeypatch.setenv("LOWPS_HOME", str(tmp_path / "cache"))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    want = lowps.PerceptualDistance("vit_lowps_test_tiny_64", weights=str(npz))(x, y)
    with FakeGCS() as gcs:
        gcs.objects["bkt"] = {"runs/vit_b8/checkpoint_1000.npz": npz.read_bytes()}
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        m = lowps.PerceptualDistance("vit_lowps_test_tiny_64", weights="gs://bkt/runs/vit_b8/checkpoint_1000.npz")
    torch.testing.assert_close(m(x, y), want)
