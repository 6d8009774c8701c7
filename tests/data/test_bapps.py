import io
import tarfile

import numpy as np
import pytest

from bapps_fixture import make_bapps
from httpserver import FileServer
from lowps.data.bapps import BappsLayoutError, JNDSet, TwoAFCSet, download_bapps, find_root, list_categories


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_bapps(tmp_path_factory.mktemp("bapps") / "dataset", n=6, categories=("traditional", "cnn"), jnd=True)


def test_readers(fixture_root):
    ds = TwoAFCSet(fixture_root, "traditional")
    assert len(ds) == 6
    ref, p0, p1, judge = ds[0]
    assert ref.shape == (3, 64, 64) and 0 <= float(ref.min()) and float(ref.max()) <= 1
    assert 0 <= float(judge) <= 1
    jnd = JNDSet(fixture_root, "cnn")
    assert len(jnd) == 6 and jnd[0][0].shape == (3, 64, 64)
    assert list_categories(fixture_root) == ["traditional", "cnn"]
    assert find_root(fixture_root.parent) == fixture_root  # the parent of dataset/ also works


def test_count_mismatch_names_the_folder(fixture_root, tmp_path):
    root = make_bapps(tmp_path / "dataset", n=3, categories=("traditional",))
    (root / "2afc/val/traditional/p1/000002.png").unlink()
    with pytest.raises(BappsLayoutError, match="p1/ has 2"):
        TwoAFCSet(root, "traditional")


def test_name_mismatch_names_the_file(tmp_path):
    root = make_bapps(tmp_path / "dataset", n=3, categories=("traditional",))
    (root / "2afc/val/traditional/judge/000001.npy").rename(root / "2afc/val/traditional/judge/000009.npy")
    with pytest.raises(BappsLayoutError, match="000001 has no partner in judge"):
        TwoAFCSet(root, "traditional")


def test_corrupt_files(tmp_path):
    root = make_bapps(tmp_path / "dataset", n=2, categories=("traditional",))
    (root / "2afc/val/traditional/judge/000000.npy").write_bytes(b"garbage")
    with pytest.raises(BappsLayoutError, match="000000.npy"):
        TwoAFCSet(root, "traditional")
    np.save(root / "2afc/val/traditional/judge/000000.npy", np.array([3.0]))
    with pytest.raises(BappsLayoutError, match=r"one value in \[0, 1\]"):
        TwoAFCSet(root, "traditional")
    np.save(root / "2afc/val/traditional/judge/000000.npy", np.array([0.5]))
    (root / "2afc/val/traditional/p0/000001.png").write_bytes(b"not a png")
    ds = TwoAFCSet(root, "traditional")
    with pytest.raises(BappsLayoutError, match="p0/000001.png"):
        ds[1]


def test_missing_category_lists_present_ones(fixture_root):
    with pytest.raises(BappsLayoutError, match="traditional, cnn"):
        TwoAFCSet(fixture_root, "superres")


def _archive(root, mode_split):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root / mode_split, arcname=mode_split)
    return buf.getvalue()


def test_download_and_extract_with_interruption(tmp_path, monkeypatch):
    src = make_bapps(tmp_path / "src", n=12, categories=("traditional",))  # > 2 download chunks
    data = _archive(src, "2afc")
    with FileServer() as server:
        server.files["/twoafc_val.tar.gz"] = data
        server.drop_after["/twoafc_val.tar.gz"] = [len(data) // 2, 1]
        monkeypatch.setenv("LOWPS_BAPPS_URL", server.url)
        dataset = download_bapps("val", progress=False)
        assert any(r for p, r in server.log if r)  # the second request resumed with a Range header
    assert TwoAFCSet(None, "traditional").root == dataset  # found by default afterwards
    assert len(TwoAFCSet(None, "traditional")) == 12
    assert not (dataset.parent / "archives" / "twoafc_val.tar.gz").exists()


def test_download_rejects_corrupt_archive(tmp_path, monkeypatch):
    with FileServer() as server:
        server.files["/jnd.tar.gz"] = b"\x1f\x8b" + b"\0" * 100
        monkeypatch.setenv("LOWPS_BAPPS_URL", server.url)
        with pytest.raises(BappsLayoutError, match="corrupt"):
            download_bapps("jnd", progress=False)


def test_download_refuses_path_traversal(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with FileServer() as server:
        server.files["/jnd.tar.gz"] = buf.getvalue()
        monkeypatch.setenv("LOWPS_BAPPS_URL", server.url)
        with pytest.raises(BappsLayoutError, match="outside"):
            download_bapps("jnd", progress=False)


def test_fifo_judge_file_is_refused_not_read(tmp_path):
    import os
    root = make_bapps(tmp_path / "dataset", n=3, categories=("traditional",))
    judge = sorted((root / "2afc" / "val" / "traditional" / "judge").iterdir())[0]
    judge.unlink()
    os.mkfifo(judge)
    with pytest.raises(BappsLayoutError, match="not a regular file"):
        TwoAFCSet(root, "traditional")


def test_hidden_folders_are_not_categories(tmp_path):
    root = make_bapps(tmp_path / "dataset", n=2, categories=("traditional",))
    (root / "2afc" / "val" / ".ipynb_checkpoints").mkdir()
    assert list_categories(root, "2afc", "val") == ["traditional"]


def _archive_with(tmp_path, extra):
    src = make_bapps(tmp_path / "src", n=2, categories=("traditional",))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "2afc", arcname="./2afc")  # a leading "./", as many tar tools write
        dot = tarfile.TarInfo(".")
        dot.type = tarfile.DIRTYPE
        tar.addfile(dot)
        extra(tar)
    return buf.getvalue()


def test_archive_with_leading_dot_members_extracts(tmp_path, monkeypatch):
    data = _archive_with(tmp_path, lambda tar: None)
    with FileServer() as server:
        server.files["/twoafc_val.tar.gz"] = data
        monkeypatch.setenv("LOWPS_BAPPS_URL", server.url)
        dataset = download_bapps("val", progress=False)
    assert len(TwoAFCSet(dataset, "traditional")) == 2


@pytest.mark.parametrize("kind", ["fifo", "setuid"])
def test_archive_special_members_are_refused_or_neutralised(tmp_path, monkeypatch, kind):
    def extra(tar):
        info = tarfile.TarInfo("2afc/val/traditional/special")
        if kind == "fifo":
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        else:
            info.size, info.mode = 2, 0o4755
            tar.addfile(info, io.BytesIO(b"#!"))
    data = _archive_with(tmp_path, extra)
    with FileServer() as server:
        server.files["/twoafc_val.tar.gz"] = data
        monkeypatch.setenv("LOWPS_BAPPS_URL", server.url)
        if kind == "fifo":
            with pytest.raises(BappsLayoutError, match="not a plain file"):
                download_bapps("val", progress=False)
        else:
            dataset = download_bapps("val", progress=False)
            mode = (dataset / "2afc" / "val" / "traditional" / "special").stat().st_mode
            assert not mode & 0o6000  # setuid/setgid bits stripped
