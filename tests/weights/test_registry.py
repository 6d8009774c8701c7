
import pytest
import torch
from safetensors.torch import save_file

import lowps
from httpserver import FileServer
from lowps import weights
from lowps.backbones import create_backbone
from lowps.weights import WeightsEntry, WeightsError


def _resnet6_file(tmp_path, name="w.safetensors", seed=1, **meta):
    bb = create_backbone("resnet6", num_classes=10, seed=seed)
    p = tmp_path / name
    sha = weights.save_checkpoint(p, bb.model, arch="resnet6", num_classes=10, **meta)
    return p, sha, bb


def test_manifest_entries_are_complete():
    for e in weights.list_weights():
        assert len(e.sha256) == 64 and e.size > 0 and e.arch and e.license and e.source
        if e.embedded:
            assert e.local_path().is_file(), f"embedded {e.name} missing from the package"
            assert weights.verify(e.name) == e.sha256
        else:
            assert e.urls, f"{e.name} has no URL"


def test_load_from_path_is_strict_and_exact(tmp_path):
    p, sha, bb = _resnet6_file(tmp_path)
    loaded = weights.build_backbone("resnet6", p)
    assert loaded.weights_sha256 == sha
    sd = bb.model.state_dict()
    assert loaded.model.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in loaded.model.state_dict().items())
    m = lowps.PerceptualDistance(weights=p)
    assert m.backbone.weights_sha256 == sha
    # different weights give a different metric than random init
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert not torch.allclose(m(x, y), lowps.PerceptualDistance(weights="random")(x, y))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    bb = create_backbone("resnet6")
    state = {k: v for k, v in bb.model.state_dict().items() if not k.startswith("stages.3")}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys \[stages\.3.*unexpected keys \[extra\.weight\]"):
        lowps.PerceptualDistance(weights=tmp_path / "bad.safetensors")


def test_shape_mismatch_is_listed(tmp_path):
    state = create_backbone("resnet6").model.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="conv1.weight"):
        lowps.PerceptualDistance(weights=tmp_path / "bad.safetensors")


def test_arch_mismatch(tmp_path):
    p, _, _ = _resnet6_file(tmp_path)
    with pytest.raises(WeightsError, match="backbone='resnet6'"):
        lowps.PerceptualDistance(backbone="resnet10", weights=p)


def test_pth_loaded_with_weights_only(tmp_path):
    bb = create_backbone("resnet6", seed=3)
    torch.save(bb.model.state_dict(), tmp_path / "w.pth")
    m = weights.build_backbone("resnet6", tmp_path / "w.pth")
    assert torch.equal(m.model.conv1.weight, bb.model.conv1.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        lowps.PerceptualDistance(weights=tmp_path / "evil.pth")


def test_unknown_name_lists_registry():
    with pytest.raises(WeightsError, match="neither a registered name"):
        lowps.PerceptualDistance(weights="no-such-weights")


def test_no_default_for_timm_models_is_explicit():
    with pytest.raises(WeightsError, match="weights='random'"):
        lowps.PerceptualDistance(backbone="timm:resnet18")


@pytest.fixture
def remote_entry(tmp_path, monkeypatch):
    p, sha, bb = _resnet6_file(tmp_path, "remote.safetensors", seed=5)
    data = p.read_bytes()
    with FileServer() as server:
        server.files["/remote.safetensors"] = data
        entry = WeightsEntry(name="test-remote", arch="resnet6", file="remote.safetensors", sha256=sha,
                             size=len(data), urls=(server.url + "/remote.safetensors",), license="test",
                             source="test", num_classes=10)
        table = dict(weights._manifest()) | {"test-remote": entry}
        monkeypatch.setattr(weights, "_manifest", lambda: table)
        yield entry, server, bb


def test_registry_download_verify_path(remote_entry):
    entry, server, bb = remote_entry
    assert not weights.path("test-remote").exists()
    path = weights.download("test-remote", progress=False)
    assert path == weights.cache_dir() / "weights" / "remote.safetensors"
    assert weights.verify("test-remote") == entry.sha256
    m = weights.build_backbone("resnet6", "test-remote")
    assert m.weights_name == "test-remote"
    assert torch.equal(m.model.conv1.weight, bb.model.conv1.weight)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # corrupt the cached file
    with pytest.raises(weights.ChecksumError):
        weights.verify("test-remote")


def test_registry_offline_names_the_file(remote_entry, monkeypatch):
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    with pytest.raises(weights.OfflineError, match="remote.safetensors"):
        lowps.PerceptualDistance(weights="test-remote")


def test_weights_from_url(remote_entry):
    entry, server, bb = remote_entry
    m = lowps.PerceptualDistance(weights=server.url + "/remote.safetensors")
    assert m.backbone.weights_sha256 == entry.sha256


def test_cli_weights_list_download_verify_path(remote_entry, capsys):
    from lowps.cli import main

    assert main(["weights", "list"]) == 0
    assert "test-remote" in capsys.readouterr().out
    assert main(["weights", "download", "test-remote", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("remote.safetensors")
    assert main(["weights", "verify", "test-remote"]) == 0
    assert remote_entry[0].sha256 in capsys.readouterr().out
    assert main(["weights", "path", "test-remote"]) == 0


@pytest.mark.parametrize("content", [b"", b"<html><body>login</body></html>", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_weights_files_give_a_clear_error(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(lowps.weights.WeightsError, match=r"bad.safetensors is not a valid safetensors file"):
        lowps.PerceptualDistance(weights=str(p))


def test_nan_weights_are_refused_at_load(tmp_path):
    from lowps.backbones import create_backbone
    bb = create_backbone("resnet6")
    with torch.no_grad():
        bb.model.conv1.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    lowps.weights.save_checkpoint(path, bb.model, arch="resnet6", num_classes=0)
    with pytest.raises(lowps.weights.WeightsError, match="NaN or inf"):
        lowps.PerceptualDistance(weights=str(path))


def test_list_is_a_deprecated_alias_of_list_weights():
    import pytest
    with pytest.warns(DeprecationWarning, match="list_weights"):
        old = weights.list(kind="backbone")
    assert [e.name for e in old] == [e.name for e in weights.list_weights(kind="backbone")]
