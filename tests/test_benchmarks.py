"""The benchmark scripts run end to end (tiny settings) and write what they promise."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_distance_tiny_run_with_memory(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distance.py"), "--sizes", "32",
                        "--batches", "2", "--min-time", "0.01", "--memory", "--json", str(out),
                        "--metrics", "lpips-alex", "lowps:meanpool", "lowps:local:bf16", "lowps.lpips-alex"],
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                         "LOWPS_BENCH_WEIGHTS": "random"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["metric"] for row in rows] == ["lpips-alex", "lowps:meanpool", "lowps:local:bf16", "lowps.lpips-alex"]
    assert rows[0]["ratio_to_alex"] == 1.0
    assert all(row["pairs_per_s"] > 0 and row["peak_mib"] is not None for row in rows)
    assert "lowps:local:bf16" in r.stdout


@pytest.mark.slow
def test_bench_score_scaling_runs_and_checks_agreement(tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_score_scaling.py"), "--make-fixture", "8",
                        "--nproc", "1", "2", "--batch-size", "4", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["identical"] is True
    assert [row["nproc"] for row in rep["rows"]] == [1, 2] and rep["rows"][0]["triplets"] == 16


@pytest.mark.slow
def test_bench_distance_backward_autocast_and_roofline(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distance.py"), "--sizes", "32",
                        "--batches", "2", "--min-time", "0.01", "--backward", "--roofline", "--json", str(out),
                        "--metrics", "lpips-alex", "lowps:meanpool", "lowps:meanpool:ac"],
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                         "LOWPS_BENCH_WEIGHTS": "random"})
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["meta"]["mode"] == "backward" and data["meta"]["conv_peak_macs_per_s"]["fp32"] > 0
    rows = {row["metric"]: row for row in data["rows"]}
    assert rows["lowps:meanpool"]["macs_per_pair"] > 1e6 and 0 < rows["lowps:meanpool"]["fraction_of_peak"]
    assert "% peak" in r.stdout and "forward + backward" in r.stdout


@pytest.mark.slow
def test_bench_pairwise_tiny_run(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pairwise.py"), "--n", "6", "--size", "32",
                        "--heads", "meanpool", "style", "--batch-size", "4", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["head"] for row in rows] == ["meanpool", "style"] and all(row["ratio"] > 0 for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize("backward", [False, True])
def test_bench_accel_tiny_run_has_every_technique_and_the_same_numbers(backward, tmp_path):
    from lowps.accel import TECHNIQUES

    out = tmp_path / "a.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_accel.py"), "--size", "32", "--batch", "2",
                        "--rounds", "1", "--json", str(out), *(["--backward"] if backward else [])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"lpips-alex", "auto", "none (reference)", "auto, head as plain ops"} | {
        f"auto without {t}" for t in TECHNIQUES if t != "fuse"}
    # Every variant computes the same distances (float32 rounding, ~1e-6) or input gradients; a
    # gradient may move more where a float32 pre-activation sits within rounding of a ReLU kink, so
    # gradients get a bound only a wrong formula exceeds.
    for name, row in rows.items():
        if name != "lpips-alex":
            assert row["max_rel_diff"] < (1e-2 if backward else 1e-4) and row["ms"] > 0, name


def test_backward_roofline_factor_matches_counted_multiply_adds():
    # bench_distance --backward --roofline counts one forward of both images and multiplies by
    # BACKWARD_MAC_FACTOR: check that against the multiply-adds autograd actually runs (plain ops
    # through the stem, so every conv's input gradient is counted as convolution_backward).
    from torch.utils.flop_counter import FlopCounterMode

    import lowps
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_distance import BACKWARD_MAC_FACTOR

    m = lowps.PerceptualDistance(weights="random")
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    fwd = FlopCounterMode(display=False)
    with fwd, torch.no_grad():
        m(x, y)
    both = FlopCounterMode(display=False)
    m.backbone.model.conv1.input_grad = "autograd"
    with both:
        m(x.requires_grad_(True), y).sum().backward()
    assert both.get_total_flops() == pytest.approx(BACKWARD_MAC_FACTOR * fwd.get_total_flops(), rel=0.01)
    # ... and every conv is counted (lowps's prepacked oneDNN convs step aside under a dispatch mode):
    # ResNet-6 with merged shortcuts is 33,226,752 multiply-adds per 64x64 image, 4 images, 2 FLOPs each
    assert fwd.get_total_flops() == pytest.approx(4 * 33_226_752 * 2, rel=0.01)


def _mapped_libc() -> str:
    """The path of the C library mapped into this process: preloading it again changes nothing."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if "/libc.so" in path or "/libc-" in path:
            return path
    pytest.skip("no libc.so in /proc/self/maps (not a glibc Linux): bench_alloc's modes are glibc's")


@pytest.mark.slow
def test_bench_alloc_runs_each_mode_alone_in_its_own_allocator_environment(tmp_path):
    out, libc = tmp_path / "a.json", _mapped_libc()
    # stray settings in the caller's environment must not leak into the "default" children
    env = {**os.environ, "LOWPS_BENCH_WEIGHTS": "random", "MALLOC_TRIM_THRESHOLD_": "12345", "LD_PRELOAD": ""}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_alloc.py"), "--size", "32", "--batch", "2",
                        "--steps", "2", "--rounds", "2", "--metrics", "lowps:meanpool", "--mode", "libc", f"LD_PRELOAD={libc}",
                        "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {row["malloc"]: row for row in data["rows"]}
    assert set(rows) == {"default", "no-raise", "tuned", "libc"}
    assert all(len(row["rounds"]) == 2 for row in rows.values())
    unset = dict.fromkeys(("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "BENCH_ALLOC_LOWPS_RAISE"))
    for mode, extra in (("default", {}), ("no-raise", {"BENCH_ALLOC_LOWPS_RAISE": "0"}),
                        ("tuned", data["meta"]["tuned_env"]), ("libc", {"LD_PRELOAD": libc})):
        want = {**unset, **extra}
        assert all({k: rd["alloc_env"][k] for k in want} == want for rd in rows[mode]["rounds"]), mode
        # lowps as shipped raises glibc's thresholds; only the no-raise children ran without that
        assert all(rd["lowps_raise"] is (mode != "no-raise") for rd in rows[mode]["rounds"]), mode
    assert all(row["ms"] > 0 and row["minor_faults"] >= 0 and row["maxrss_mib"] > 0 for row in rows.values())
    assert rows["default"]["speedup_vs_default"] == 1.0 and "faults/step" in r.stdout


def test_bench_alloc_names_a_bad_mode_and_the_fix(tmp_path):
    def run(*mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_alloc.py"), "--mode", *mode],
                              capture_output=True, text=True, timeout=60)

    missing = run("je", f"LD_PRELOAD={tmp_path / 'nope.so'}")
    assert missing.returncode == 2 and "nope.so" in missing.stderr and "apt install libjemalloc2" in missing.stderr
    assert "expected VAR=VALUE" in run("je", "/usr/lib/libjemalloc.so.2").stderr
    other = run("je", "PYTHONPATH=/x")  # only allocator settings: a mode cannot change what is measured
    assert other.returncode == 2 and "'PYTHONPATH=/x': expected VAR=VALUE with VAR one of" in other.stderr
    assert "no settings" in run("je").stderr
    taken = run("tuned", f"LD_PRELOAD={_mapped_libc()}")
    assert taken.returncode == 2 and "taken: default, no-raise, tuned" in taken.stderr
