"""The paper's checkpoints from Cloud Storage: a fake bucket on 127.0.0.1 (STORAGE_EMULATOR_HOST)."""
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (torchvision must be imported before TensorFlow, or it segfaults)

import lowps
from gcs_fake import FakeGCS
from lowps.cli import main
from lowps.weights import ChecksumError, DownloadError, WeightsError
from lowps.weights.convert_tf import convert_tf_checkpoint
from tf_fixtures import save_tf_checkpoint, tpu_resnet_vars

pytest.importorskip("tensorflow", reason="the test checkpoints are written by TensorFlow: pip install 'lowps[convert]'")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ResNet-6 checkpoint written by TensorFlow: ``{object suffix: bytes}`` and its local prefix."""
    d = tmp_path_factory.mktemp("tfckpt")
    variables, _ = tpu_resnet_vars(np.random.default_rng(3), 6)
    prefix = d / "model.ckpt-3000"
    save_tf_checkpoint(prefix, variables)
    files = {".index": (d / "model.ckpt-3000.index").read_bytes(),
             ".data-00000-of-00001": (d / "model.ckpt-3000.data-00000-of-00001").read_bytes()}
    return files, prefix


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWPS_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWPS_OFFLINE", raising=False)
    return tmp_path


def _put(bucket: dict, stem: str, files: dict) -> None:
    for suffix, data in files.items():
        bucket[stem + suffix] = data


def _pair():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)


def test_gs_weights_equal_the_local_conversion_then_load_offline(env, checkpoint, monkeypatch):
    files, prefix = checkpoint
    local = env / "local.safetensors"
    convert_tf_checkpoint(prefix, "resnet6", local)
    x, y = _pair()
    want = lowps.PerceptualDistance(weights=str(local))(x, y)
    uri = "gs://bkt/runs/r6/model.ckpt-3000"
    with FakeGCS(page_size=2) as gcs:  # two objects a page: the listing is paged
        objs = gcs.objects.setdefault("bkt", {})
        _put(objs, "runs/r6/model.ckpt-3000", files)
        _put(objs, "runs/r6/model.ckpt-30000", {".index": b"another step", ".data-00000-of-00001": b"x"})
        objs["runs/r6/events.out"] = b"not a checkpoint"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        m = lowps.PerceptualDistance(weights=uri)
        assert any("pageToken" in p for p in gcs.log)
        media = [p for p in gcs.log if "alt=media" in p]
        assert len(media) == 2 and not any("30000" in p for p in media)  # model.ckpt-30000 is another checkpoint
    got = m(x, y)
    assert m.backbone.weights_name == uri
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    # the server is gone: the pinned copy loads with no network, offline mode included
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    again = lowps.PerceptualDistance(weights=uri)(x, y)
    assert torch.equal(again, got)


def _paper_bucket(gcs, files):
    objs = gcs.objects.setdefault("gresearch", {})
    for arch_dir, steps in [("resnet6", (1000, 3000)), ("resnet_200", (5000,))]:
        for step in steps:
            _put(objs, f"perceptual_similarity/{arch_dir}/model.ckpt-{step}", files)
    objs["perceptual_similarity/vit_b8/checkpoint_1000.npz"] = b"npz"
    objs["perceptual_similarity/README"] = b"readme"


def test_catalogue_lists_and_resolves_short_names(env, checkpoint, monkeypatch, capsys):
    files, _ = checkpoint
    with FakeGCS(page_size=4) as gcs:
        _paper_bucket(gcs, files)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        assert main(["weights", "list", "--remote", "kumar2022"]) == 0
        out = capsys.readouterr().out
        for name, arch in [("kumar2022:resnet6@1000", "resnet6"), ("kumar2022:resnet6@3000", "resnet6"),
                           ("kumar2022:resnet200@5000", "resnet200_tpu"), ("kumar2022:vitb8@1000", "vit_base_patch8_64")]:
            assert any(line.split()[:2] == [name, arch] for line in out.splitlines()), (name, out)
        m = lowps.PerceptualDistance(weights="kumar2022:resnet6@3000")
        assert m.backbone.weights_name == "kumar2022:resnet6@3000"
        with pytest.raises(WeightsError, match="nearest: .*resnet6@3000"):
            lowps.PerceptualDistance(weights="kumar2022:resnet6@2500")
        with pytest.raises(WeightsError, match="backbone='resnet200_tpu'"):
            lowps.PerceptualDistance(weights="kumar2022:resnet200@5000")
        assert main(["weights", "download", "kumar2022:resnet6@1000", "--quiet"]) == 0
        assert capsys.readouterr().out.strip().endswith("resnet6.safetensors")


def test_clear_errors_for_private_missing_and_corrupt(env, checkpoint, monkeypatch):
    files, _ = checkpoint
    with FakeGCS() as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        gcs.objects["open"] = {}
        _put(gcs.objects["open"], "p/model.ckpt-1", files)
        gcs.objects["secret"] = {}
        gcs.private.add("secret")
        with pytest.raises(DownloadError, match="access denied"):
            lowps.PerceptualDistance(weights="gs://secret/p/model.ckpt-1")
        with pytest.raises(DownloadError, match="no such bucket"):
            lowps.PerceptualDistance(weights="gs://nobucket/p/model.ckpt-1")
        with pytest.raises(WeightsError, match="no checkpoint there.*p/model.ckpt-1.index"):
            lowps.PerceptualDistance(weights="gs://open/p/model.ckpt-2")
        with pytest.raises(WeightsError, match="not a gs://"):
            lowps.PerceptualDistance(weights="gs://x")
        gcs.corrupt.add("p/model.ckpt-1.data-00000-of-00001")
        with pytest.raises(ChecksumError, match="MD5"):
            lowps.PerceptualDistance(weights="gs://open/p/model.ckpt-1")
        assert not list((env / "cache").rglob("*.safetensors"))  # nothing converted from bad bytes
        gcs.corrupt.clear()
        lowps.PerceptualDistance(weights="gs://open/p/model.ckpt-1")  # a retry succeeds


def test_emulator_host_without_scheme(monkeypatch):
    from lowps.weights.gcs import endpoint

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    assert endpoint() == "http://127.0.0.1:4443"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    assert endpoint() == "https://storage.googleapis.com"
