"""lowps.accel.allocator: the one process-level setting lowps offers (tune_allocator), never made by a call."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from lowps.accel import allocator as _cpu

glibc_linux = pytest.mark.skipif(not (sys.platform.startswith("linux") and _cpu._glibc()),
                                 reason="glibc's dynamic malloc thresholds exist only under glibc on Linux")


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (thresholds as glibc starts them) and return its last JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@glibc_linux
def test_raise_malloc_thresholds_stops_the_heap_trim_between_steps():
    # A step's pattern: twelve 2 MiB blocks live at once (24 MiB), touched, then all freed. With glibc's
    # starting thresholds the trim threshold ends at 2 x 2 MiB, so the freed top of the heap goes back
    # to the kernel after every round and each page faults again: 6,144 pages a round. The blocks come
    # straight from libc (ctypes): a tensor's small metadata allocated above them could pin the heap's
    # top by chance and hide the trim (seen in 2 of 8 processes with torch.empty).
    out = _fresh("""
        import ctypes, json, resource
        from lowps.accel import allocator as _cpu

        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
        # 4 KiB pages whatever the kernel's transparent-huge-page setting ("always" would fault the
        # heap in 2 MiB pages and hide the count): PR_SET_THP_DISABLE, for this process only
        libc.prctl(41, 1, 0, 0, 0)

        def faults_per_round(rounds=6, size=2**21):
            counts = []
            for _ in range(rounds):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                blocks = [libc.malloc(size) for _ in range(12)]
                for b in blocks:
                    ctypes.memset(b, 1, size)
                for b in blocks:
                    libc.free(b)
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            return min(counts[2:])  # after the heap has grown to the working set

        plain = faults_per_round()
        raised = _cpu.raise_malloc_thresholds()
        print(json.dumps({"plain": plain, "raised": raised, "after": faults_per_round()}))
    """)
    pages = 12 * 2**21 // 4096
    assert out["raised"] is True
    assert out["plain"] > pages // 2, out  # the trim happens without the raise ...
    assert out["after"] < pages // 20, out  # ... and not after it


@glibc_linux
@pytest.mark.slow
@pytest.mark.parametrize("call", ["loss", "inference"])
def test_a_lowps_only_process_does_not_page_fault_per_call(call):
    # The user-visible property: lowps as the only model in a process (an image optimised against it,
    # a folder scored), at 64x64/32. Without the raise a loss step took ~4,000-6,000 faults in most
    # processes (bench_alloc.py's no-raise mode; fewer where a small block happens to pin the heap's
    # top), and an inference call ~6,000 (bench_alloc.py --inference, 2026-12-04 evening).
    out = _fresh(f"""
        import json, resource, torch, lowps
        lowps.accel.tune_allocator()  # what docs/performance.md advises for such a process
        metric = lowps.PerceptualDistance(weights="random")
        x, y = torch.rand(32, 3, 64, 64), torch.rand(32, 3, 64, 64)
        def step():
            if {call!r} == "loss":
                xg = x.clone().requires_grad_()
                metric(xg, y).sum().backward()
            else:
                with torch.inference_mode():
                    metric(x, y)
        for _ in range(3):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            step()
        print(json.dumps({{"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}}))
    """)
    assert out["faults"] < 500, out


def test_raise_malloc_thresholds_is_asked_once_and_skips_other_c_libraries(monkeypatch):
    monkeypatch.setattr(_cpu, "_MALLOC_RAISED", [])
    monkeypatch.setattr(_cpu, "_glibc", lambda: False)
    monkeypatch.setattr(_cpu.ctypes, "CDLL", lambda *a: pytest.fail("no C library call outside glibc"))
    assert _cpu.raise_malloc_thresholds() is False
    assert _cpu.raise_malloc_thresholds() is False  # cached: asked once per process
    assert _cpu._MALLOC_RAISED == [False]


def test_glibc_is_detected_from_confstr(monkeypatch):
    monkeypatch.setattr(_cpu.os, "confstr", lambda name: "glibc 2.36")
    assert _cpu._glibc() is True

    def missing(name):
        raise ValueError("unrecognized configuration name")
    monkeypatch.setattr(_cpu.os, "confstr", missing)
    assert _cpu._glibc() is False


@glibc_linux
def test_library_calls_leave_process_global_state_alone(tmp_path):
    """Issue #36: in a fresh process, after lowps.distance (inference and a loss), lowps.LPIPS,
    pairwise/nearest, scoring and a plot, a 24 MiB malloc is still served by mmap (glibc's thresholds
    untouched), the global torch RNG is where it was, the matplotlib backend is the caller's, and the
    environment variables and torch's thread count are unchanged (the snapshot is taken after importing
    lowps's dependencies: importing torchvision sets TORCHINDUCTOR_CACHE_DIR, for any program that uses it).
    Then lowps.accel.tune_allocator() does change the thresholds (the check can fail)."""
    pytest.importorskip("matplotlib")
    from judgement_fixtures import make_2afc_csv

    csv = make_2afc_csv(tmp_path / "set", n=4, size=32)
    out = _fresh(f"""
        import ctypes, json, os, torch, matplotlib
        matplotlib.use("svg")
        import numpy, timm, torchvision, tqdm  # their import-time effects are theirs, not a call's
        import lowps
        from lowps.agreement import build_scorer, plot_comparison, score_judgements
        from lowps.data.judgements import read_2afc_csv

        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]

        def mmapped():  # the IS_MMAPPED bit of the chunk header in front of a 24 MiB block
            p = libc.malloc(24 << 20)
            bit = bool(ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value & 2)
            libc.free(p)
            return bit

        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
        rng, env, threads = torch.get_rng_state(), dict(os.environ), torch.get_num_threads()
        lowps.distance(x, y)
        with torch.inference_mode():
            lowps.distance(x, y)
        xg = x.clone().requires_grad_()
        lowps.distance(xg, y).sum().backward()
        rng_after_distance = torch.equal(rng, torch.get_rng_state())
        lp = lowps.LPIPS(net="squeeze", pretrained=False, pnet_rand=True, verbose=False)
        rng_after_lpips_init = torch.get_rng_state()  # pnet_rand draws its init, as lpips does
        lp(x, y, normalize=True)
        lowps.pairwise(x, y)
        lowps.nearest(x, x, k=1, exclude_self=True)
        report = score_judgements("2afc", read_2afc_csv({str(csv)!r}), build_scorer("l2"), bootstrap=100,
                                  progress=False)
        plot_comparison([report], {str(tmp_path / "p.png")!r})
        state = {{"mmapped": mmapped(), "backend": matplotlib.get_backend(),
                 "rng": rng_after_distance and torch.equal(rng_after_lpips_init, torch.get_rng_state()),
                 "env_changed": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
                 "threads": torch.get_num_threads() == threads}}
        state["tuned"] = lowps.accel.tune_allocator()
        state["mmapped_after_tuning"] = mmapped()
        print(json.dumps(state))
    """)
    assert out["mmapped"] is True, out
    assert out["rng"] is True, out
    assert out["backend"] == "svg", out
    assert out["env_changed"] == [] and out["threads"] is True, out
    assert out["tuned"] is True and out["mmapped_after_tuning"] is False, out
