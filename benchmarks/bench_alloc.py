"""Page faults in a training-loss step under glibc's default malloc, and what the fixes recover.

    python benchmarks/bench_alloc.py [--metrics lowps:meanpool lpips-alex] [--size 64] [--batch 32]
        [--steps 20] [--rounds 5] [--backward | --inference] [--json FILE]
        [--mode tcmalloc LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4] [--mode ...]

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold with
``mmap`` and hands the top of its heap back to the kernel once more than its trim threshold lies
free there. Both thresholds start small (128 KiB) and grow only when the process frees an mmapped
block larger than the current one (mmap threshold = that block, up to 32 MiB; trim threshold = twice
it). So a process whose largest block is small against the memory one step allocates trims its heap
at the end of every step, and every 4 KiB page of the next step's tensors faults on first touch:
system time and slower kernels, on every step. lowps at 64x64/32 is such a case when it runs alone
in a process, as a loss (blocks of at most 4.7 MiB, ~24 MiB allocated and freed per step) and at
inference (~6,000 faults per call without the raise). A process that has once freed a larger block shows none
of it: LPIPS's constructor frees AlexNet's 16 MiB classifier weight, which is also why
``bench_distance.py`` (every metric in one process) hardly does. lowps now raises the thresholds
when asked (``lowps.accel.tune_allocator()``, an explicit call since lowps 0.3: a library call must not
change process-global state); the ``no-raise`` mode measures what that recovers.

Each metric runs alone in a fresh child process once per mode, the modes alternating within each of
``--rounds`` rounds so all see the same machine conditions:

* ``default``: glibc with its own (dynamic) thresholds, raised to their ceiling by
  ``lowps.accel.tune_allocator()`` before the metric is built, as docs/performance.md advises for a
  process where lowps is the only model (the ``lowps`` CLIs do it for their own process); the
  caller's ``MALLOC_*`` and ``LD_PRELOAD`` are removed;
* ``no-raise``: the same without the call (what a library user who never calls it gets);
* ``tuned``: glibc with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` fixed (blocks up to
  32 MiB from the heap, freed memory kept for reuse; fixing either turns the dynamic thresholds off);
* one mode per ``--mode NAME VAR=VALUE ...``: those settings, e.g. another allocator through
  ``LD_PRELOAD`` (jemalloc or tcmalloc, what PyTorch's ``python -m torch.backends.xeon.run_cpu``
  launcher preloads) with its ``MALLOC_CONF``. A child with ``LD_PRELOAD`` checks that the library
  is mapped into it and fails otherwise, so a path the loader ignored cannot pass for glibc.

Printed per metric and mode: the median step time over the rounds (each round's value is the median
of ``--steps`` steps after warm-up), the minor page faults and the system CPU time per step
(``getrusage``), the resident memory after the last step (``ru_maxrss``: the process's peak), and the
speed-up over ``default``: the median over rounds of the ratio to that round's ``default`` child, which
ran just before (on a shared VM the speed drifts between rounds by more than these effects).
The tuned and preloaded processes keep freed memory mapped, so their resident size stays near the
peak between steps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from lowps.accel.allocator import GLIBC_DYNAMIC_MMAP_MAX

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: glibc's largest mmap threshold on 64-bit (32 MiB, also the ceiling of its adaptive rule), and a
#: trim threshold far above any step's working set here, so freed heap stays for the next step.
TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(GLIBC_DYNAMIC_MMAP_MAX), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
#: This benchmark's own switch (read by the child, not by lowps): "0" skips ``lowps.accel.tune_allocator()``.
NO_RAISE_VAR = "BENCH_ALLOC_LOWPS_RAISE"
#: What a mode sets; every child starts with these removed, so "default" means glibc's defaults.
ALLOC_VARS = (*TUNED_ENV, "LD_PRELOAD", "MALLOC_CONF", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_", NO_RAISE_VAR)


def _mapped(path: str) -> bool:
    """Whether the shared library at ``path`` is mapped into this process (/proc/self/maps)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(real) or line.rstrip().endswith(path) for line in f)


def child(metric: str, size: int, batch: int, steps: int, backward: bool) -> dict:
    """Time ``steps`` calls of ``metric`` in this process (after warm-up): median ms, faults and system ms per step."""
    preload = os.environ.get("LD_PRELOAD")
    if preload and not _mapped(preload):
        raise SystemExit(f"bench_alloc: LD_PRELOAD={preload} is not mapped into the child process: the dynamic "
                         "loader ignored it (wrong path or architecture); pass the library's full path")
    import torch
    from bench_distance import make, run_once

    import lowps

    raised = os.environ.get(NO_RAISE_VAR) != "0"
    if raised:
        lowps.accel.tune_allocator()
    torch.manual_seed(0)
    fn = make(metric, "cpu")
    x, y = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    for _ in range(3):
        run_once(fn, x, y, backward)
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t0 = time.perf_counter()
        run_once(fn, x, y, backward)
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"ms": 1e3 * statistics.median(times), "minor_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps, "maxrss_mib": r1.ru_maxrss / 1024,
            "alloc_env": {k: os.environ.get(k) for k in ALLOC_VARS},
            "lowps_raise": raised}


def mode_envs(specs: list[list[str]]) -> dict[str, dict[str, str]]:
    """The environment each mode adds to a child: ``default``, ``tuned`` and one per ``--mode NAME
    VAR=VALUE ...`` (ValueError naming the problem for a malformed spec, a taken name, a variable
    this benchmark does not manage, or an ``LD_PRELOAD`` file that does not exist)."""
    modes: dict[str, dict[str, str]] = {"default": {}, "no-raise": {NO_RAISE_VAR: "0"}, "tuned": dict(TUNED_ENV)}
    for name, *assignments in specs:
        if name in modes or "=" in name:
            raise ValueError(f"--mode {name!r}: give a new mode name first (taken: {', '.join(modes)}), "
                             "then VAR=VALUE settings")
        env = {}
        for item in assignments:
            var, sep, value = item.partition("=")
            if not sep or var not in ALLOC_VARS:
                raise ValueError(f"--mode {name} {item!r}: expected VAR=VALUE with VAR one of {', '.join(ALLOC_VARS)}")
            env[var] = value
        if not env:
            raise ValueError(f"--mode {name}: no settings; e.g. --mode jemalloc "
                             "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
        if "LD_PRELOAD" in env:
            if not os.path.isfile(env["LD_PRELOAD"]):
                raise ValueError(f"--mode {name}: no file at LD_PRELOAD={env['LD_PRELOAD']} (Debian: apt install "
                                 "libjemalloc2 or libtcmalloc-minimal4; `ldconfig -p | grep -e jemalloc -e tcmalloc` "
                                 "lists them)")
            env["LD_PRELOAD"] = os.path.abspath(env["LD_PRELOAD"])
        modes[name] = env
    return modes


def run_child(metric: str, a: argparse.Namespace, extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALLOC_VARS}
    env.update(extra)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", metric, "--size", str(a.size), "--batch",
           str(a.batch), "--steps", str(a.steps)] + ([] if a.backward else ["--inference"])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"bench_alloc: the child for {metric} ({extra or 'default'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", nargs="+", default=["lowps:meanpool", "lpips-alex"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per child (after 3 warm-up steps)")
    p.add_argument("--rounds", type=int, default=5, help="alternating children per metric and mode")
    p.add_argument("--mode", nargs="+", action="append", default=[], metavar="NAME VAR=VALUE",
                   help="an extra mode: its name, then the allocator settings it runs with "
                        f"({', '.join(ALLOC_VARS)}); repeat for more")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--backward", dest="backward", action="store_true", default=True,
                      help="forward + backward to the first image, as a training loss (the default)")
    mode.add_argument("--inference", dest="backward", action="store_false", help="inference calls instead")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.size, a.batch, a.steps, a.backward)))
        return
    try:
        modes = mode_envs(a.mode)
    except ValueError as e:
        p.error(str(e))

    import torch
    from bench_distance import cpu_name

    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{a.size}x{a.size}, batch {a.batch}, {'forward + backward' if a.backward else 'inference'}, "
          f"{a.rounds} alternating rounds of {a.steps} steps, each metric and mode alone in a fresh process")
    results = {m: {k: [] for k in modes} for m in a.metrics}
    for _ in range(a.rounds):
        for m in a.metrics:
            for k, extra in modes.items():
                results[m][k].append(run_child(m, a, extra))
    mw = max(10, 2 + max(map(len, modes)))
    print(f"{'metric':<18}{'malloc':>{mw}}{'ms/step':>10}{'faults/step':>13}{'sys ms/step':>13}{'max RSS MiB':>13}"
          f"{'speed-up':>10}")
    rows = []
    fields = ("ms", "minor_faults", "sys_ms", "maxrss_mib")
    for m in a.metrics:
        med = {k: {f: statistics.median(r[f] for r in v) for f in fields} for k, v in results[m].items()}
        for k in modes:
            # per round, against the default child of the same round (adjacent in time): this VM's speed
            # drifts by more than the effect between rounds, less within one
            speedup = statistics.median(d["ms"] / r["ms"] for d, r in zip(results[m]["default"], results[m][k]))
            rows.append({"metric": m, "malloc": k, **med[k], "speedup_vs_default": speedup, "rounds": results[m][k]})
            print(f"{m:<18}{k:>{mw}}{med[k]['ms']:>10.1f}{med[k]['minor_faults']:>13.0f}{med[k]['sys_ms']:>13.1f}"
                  f"{med[k]['maxrss_mib']:>13.0f}{speedup:>9.2f}x", flush=True)
    if a.json:
        from lowps._io import write_json

        meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "date": str(datetime.date.today()), "size": a.size, "batch": a.batch, "steps": a.steps,
                "rounds": a.rounds, "mode": "backward" if a.backward else "inference", "modes": modes,
                "tuned_env": TUNED_ENV}
        write_json(a.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
