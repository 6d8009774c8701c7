import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

import lowps
from httpserver import FileServer
from lowps.weights.hub import ChecksumError, DownloadError, OfflineError, cache_dir, download_file, sha256_file

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def _range_start(header):
    assert header and header.startswith("bytes=")
    return int(header[6:].split("-")[0])


@pytest.fixture
def server():
    with FileServer() as s:
        s.files["/w.bin"] = DATA
        yield s


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWPS_HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h"
    monkeypatch.delenv("LOWPS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lowps"


def test_good_download_and_cache_hit(server, tmp_path):
    dest = tmp_path / "c" / "w.bin"
    assert download_file(server.url + "/w.bin", dest, SHA, size=len(DATA), progress=False) == dest
    assert dest.read_bytes() == DATA
    n = len(server.log)
    download_file(server.url + "/w.bin", dest, SHA, progress=False)
    assert len(server.log) == n  # cached: no request
    assert not list((dest.parent / ".partial").glob("*.part"))


def test_wrong_checksum_caches_nothing(server, tmp_path):
    dest = tmp_path / "c" / "w.bin"
    with pytest.raises(ChecksumError, match="does not match"):
        download_file(server.url + "/w.bin", dest, "0" * 64, progress=False)
    assert not dest.exists()
    assert not list((dest.parent / ".partial").glob("*.part"))


def test_wrong_size_caches_nothing(server, tmp_path):
    dest = tmp_path / "c" / "w.bin"
    with pytest.raises(ChecksumError, match="bytes"):
        download_file(server.url + "/w.bin", dest, SHA, size=len(DATA) + 1, progress=False, retries=0)
    assert not dest.exists()


def test_dropped_connection_resumes_within_one_call(server, tmp_path):
    server.drop_after["/w.bin"] = [100_000, 1]
    dest = tmp_path / "c" / "w.bin"
    download_file(server.url + "/w.bin", dest, SHA, progress=False, backoff=0)
    assert dest.read_bytes() == DATA
    assert 0 < _range_start(server.log[-1][1]) <= 100_000  # the retry asked only for the rest


def test_dropped_connection_leaves_no_partial_in_cache_and_next_call_resumes(server, tmp_path):
    server.drop_after["/w.bin"] = [120_000, 1]
    dest = tmp_path / "c" / "w.bin"
    with pytest.raises(DownloadError, match="Partial data kept"):
        download_file(server.url + "/w.bin", dest, SHA, progress=False, retries=0)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.is_file()] == []  # nothing but .partial/
    download_file(server.url + "/w.bin", dest, SHA, progress=False, retries=0)
    assert dest.read_bytes() == DATA and 0 < _range_start(server.log[-1][1]) <= 120_000


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(server.url + "/missing.bin", tmp_path / "m.bin", SHA, progress=False, retries=3)
    assert len(server.log) == 1


def test_mirror_fallback(server, tmp_path):
    dest = tmp_path / "w.bin"
    download_file([server.url + "/missing.bin", server.url + "/w.bin"], dest, SHA, progress=False)
    assert dest.read_bytes() == DATA


def test_offline_mode_names_the_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    dest = tmp_path / "c" / "w.bin"
    with pytest.raises(OfflineError, match=str(dest).replace("\\", "\\\\")):
        download_file(server.url + "/w.bin", dest, SHA, progress=False)
    assert server.log == []
    dest.parent.mkdir(parents=True)
    dest.write_bytes(DATA)  # a user placing the file by hand makes it work offline
    assert download_file(server.url + "/w.bin", dest, SHA, progress=False) == dest


def test_read_only_cache(server, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new directories to everyone
        dest = Path("/proc/lowps-cache-test/w.bin")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        dest = ro / "w.bin"
    with pytest.raises(DownloadError, match="LOWPS_HOME"):
        download_file(server.url + "/w.bin", dest, SHA, progress=False)


def _fetch(url, dest, sha, q):
    try:
        download_file(url, dest, sha, progress=False)
        q.put(sha256_file(dest))
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


@pytest.mark.slow
def test_two_processes_fetch_one_file(server, tmp_path):
    dest = tmp_path / "c" / "w.bin"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(server.url + "/w.bin", dest, SHA, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == [SHA, SHA]
    assert sum(1 for path, _ in server.log if path == "/w.bin") == 1  # the lock made the second wait
    assert dest.read_bytes() == DATA


# -- hardening: the wrong file is never served, bad files never stay, slow servers cannot hang a call --

def _r6_bytes(tmp_path, seed):
    from lowps.backbones import create_backbone
    p = tmp_path / f"r6_{seed}.safetensors"
    lowps.weights.save_checkpoint(p, create_backbone("resnet6", seed=seed).model, arch="resnet6", num_classes=0)
    return p.read_bytes()


def test_same_file_name_at_two_urls_are_two_cache_entries(tmp_path):
    a, b = _r6_bytes(tmp_path, 1), _r6_bytes(tmp_path, 2)
    with FileServer() as s1, FileServer() as s2:
        s1.files["/ok/r6.safetensors"] = a
        s2.files["/ok/r6.safetensors"] = b
        m1 = lowps.PerceptualDistance(weights=s1.url + "/ok/r6.safetensors")
        m2 = lowps.PerceptualDistance(weights=s2.url + "/ok/r6.safetensors")
        assert len(s2.log) == 1  # the second URL was fetched, not served from the first one's file
    w1 = next(m1.backbone.parameters())
    w2 = next(m2.backbone.parameters())
    assert not torch.equal(w1, w2)
    assert lowps.weights.url_cache_path(s1.url + "/ok/r6.safetensors").name == "r6.safetensors"


def test_html_page_as_weights_is_refused_and_not_kept(tmp_path):
    good = _r6_bytes(tmp_path, 1)
    with FileServer() as s:
        url = s.url + "/w.safetensors"
        s.files["/w.safetensors"] = b"<html><body>Please log in to the network</body></html>"
        with pytest.raises(lowps.weights.WeightsError, match="not a valid safetensors file"):
            lowps.PerceptualDistance(weights=url)
        assert not lowps.weights.url_cache_path(url).exists()
        s.files["/w.safetensors"] = good  # the portal is gone: the next call downloads again and works
        lowps.PerceptualDistance(weights=url)
        assert len(s.log) == 2


def test_trickling_server_hits_the_deadline(tmp_path):
    import time

    from lowps.weights.hub import DownloadError, download_file
    with FileServer() as s:
        s.files["/slow.bin"] = b"x" * 1000
        s.trickle["/slow.bin"] = 0.05
        start = time.monotonic()
        with pytest.raises(DownloadError, match="deadline"):
            download_file(s.url + "/slow.bin", tmp_path / "slow.bin", None, progress=False, retries=0,
                          timeout=5, deadline=1.0)
        assert time.monotonic() - start < 10
    assert not (tmp_path / "slow.bin").exists()


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_redirects_to_other_schemes_are_clear_errors(tmp_path, target):
    from lowps.weights.hub import DownloadError, download_file
    with FileServer() as s:
        s.redirect["/r.safetensors"] = target
        with pytest.raises(DownloadError, match="only http"):
            download_file(s.url + "/r.safetensors", tmp_path / "r.safetensors", None, progress=False)


def test_manifest_entry_outside_the_cache_is_refused(monkeypatch):
    from lowps.weights import WeightsEntry
    e = lowps.weights.get("resnet6-tiny-s100")
    bad = WeightsEntry(**{**e.__dict__, "file": "../../escaped.safetensors", "embedded": False})
    with pytest.raises(lowps.weights.WeightsError, match="outside"):
        bad.local_path()
