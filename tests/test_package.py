"""The package surface: lazy imports, timm registration in any import order, one version."""
import pkgutil
import subprocess
import sys

import pytest

import lowps


def _run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_import_lowps_is_light():
    out = _run("import sys, lowps; print('timm' in sys.modules, 'torchvision' in sys.modules, 'scipy' in sys.modules)")
    assert out.split() == ["False", "False", "False"]


def test_cli_help_imports_no_torch():
    out = _run("import sys; from lowps.cli import build_parser, build_score_parser; build_parser(); "
               "build_score_parser(); print('torch' in sys.modules)")
    assert out.strip() == "False"


def test_timm_registry_in_either_import_order():
    for code in ("import lowps, timm; print(type(timm.create_model('resnet6')).__name__)",
                 "import timm, lowps; print(type(timm.create_model('resnet6')).__name__)"):
        assert _run(code).strip() == "TPUResNet"


def test_no_attribute_is_shadowed_by_a_submodule():
    modules = {m.name for m in pkgutil.iter_modules(lowps.__path__)}
    assert not set(lowps._ATTRS) & modules
    for name in lowps.__all__:
        assert getattr(lowps, name) is not None
    assert callable(lowps.pairwise) and callable(lowps.nearest)


def test_star_imports_work():
    _run("from lowps import *; from lowps.weights import *; from lowps.scoring import *")


def test_version_is_defined_once():
    from importlib.metadata import version
    assert version("lowps") == lowps.__version__


def test_ruff_is_clean():
    import shutil
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        import pytest
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    r = subprocess.run([ruff, "check", "src", "tests", "benchmarks", "tools", "examples", "hubconf.py"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.slow  # ~20 s cold
def test_mypy_is_clean(tmp_path):
    """The package is typed (py.typed): ``mypy`` (config in pyproject.toml) finds no errors in src/."""
    import shutil
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        import pytest
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    r = subprocess.run([mypy, "--cache-dir", str(tmp_path / "cache"), "src/"], cwd=root, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]


def test_removed_shims_are_gone():
    # 0.3 removed the 0.2 aliases (CHANGELOG): lowps.evaluate is lowps.agreement, lowps.cli_score is
    # lowps.cli.score (python -m lowps.cli.score runs lowps-score, e.g. under torchrun -m)
    import importlib

    import pytest
    for name in ("lowps.evaluate", "lowps.cli_score"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
    assert "evaluate" not in dir(lowps)


def test_the_lpips_drop_in_reads_like_lpips():
    """Issue #36: no function of the drop-in above cyclomatic complexity 15 (radon), so it reads like
    lpips's own model (lpips's LPIPS.forward is a dozen lines)."""
    import pytest
    radon = pytest.importorskip("radon.complexity", reason="radon is in the test extra: pip install -e '.[test]'")
    from pathlib import Path
    src = (Path(__file__).resolve().parents[1] / "src" / "lowps" / "lpips_compat.py").read_text()
    blocks = radon.cc_visit(src)
    worst = max((b for b in blocks), key=lambda b: b.complexity)
    assert len(blocks) > 10
    assert worst.complexity <= 15, f"{worst.name}: {worst.complexity}"
