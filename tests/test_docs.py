import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_generated_from_the_parsers():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_docs.py"), "--check"], capture_output=True)
    assert r.returncode == 0, "docs/cli.md is stale: run python tools/gen_cli_docs.py"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="docs extra not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "WARNING" not in r.stderr
    api = (tmp_path / "site" / "api" / "metric.html").read_text()
    assert "PerceptualDistance" in api and "Kumar et al. 2022" in api
    import re
    site = tmp_path / "site"
    for page in site.rglob("*.html"):
        html = page.read_text()
        # works offline: no script or stylesheet from another host, no raw Sphinx roles, no edit link
        assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", html), page
        assert not re.search(r":(?:class|func|meth|mod):`", html), page
        assert "Edit on" not in html, page
    assert (site / "css" / "pygments.css").is_file() and 'class="highlight"' in (site / "quickstart.html").read_text()
    _every_internal_link_opens_from_file(site)


def _every_internal_link_opens_from_file(site):
    """Click through the built site as a browser does from file://: every relative href and src of
    every page must name a file that exists (a folder URL would show a directory listing, not a page),
    and every #fragment must be an id on the target page."""
    from html.parser import HTMLParser
    from urllib.parse import unquote, urlsplit

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            for k, v in attrs:
                if k in ("href", "src") and v:
                    self.links.append(v)
                if k == "id" and v:
                    self.ids.add(v)

    pages = {}
    for page in site.rglob("*.html"):
        p = Links()
        p.feed(page.read_text())
        pages[page.resolve()] = p
    broken, checked = [], 0
    for page, p in pages.items():
        if "search" in page.parts or page.name == "404.html":  # the 404 page is for web servers (absolute paths)
            continue
        for link in p.links:
            u = urlsplit(link)
            if u.scheme or link.startswith("//") or link.startswith("mailto:"):
                continue
            target = (page.parent / unquote(u.path)).resolve() if u.path else page
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(site.resolve())}: {link}")
            elif u.fragment and target.suffix == ".html" and target in pages and u.fragment not in pages[target].ids:
                broken.append(f"{page.relative_to(site.resolve())}: {link} (no #{u.fragment})")
    assert checked > 100
    assert not broken, broken[:20]


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line.strip() for line in readme[:20] if "pytest" in line)
    assert test_cmd in ci, f"README's test command {test_cmd!r} is not what .ci/run runs"


def test_readme_usage_block_runs(tmp_path):
    import re

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    # torchvision's AlexNet ImageNet weights are a download (unreachable here); the README line is
    # run with a random trunk instead, which exercises the same code path.
    assert 'lowps.LPIPS(net="alex")' in block
    block = block.replace('lowps.LPIPS(net="alex")', 'lowps.LPIPS(net="alex", pnet_rand=True)')
    script = tmp_path / "readme_usage.py"
    script.write_text(block)
    env = dict(os.environ, LOWPS_OFFLINE="1")
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.fullmatch(r"tensor\(\[\d\.\d+e?-?\d*\]\)\n", r.stdout), r.stdout


PAPER = ROOT / ".." / "shared" / "paper" / "kumar2022-better-imagenet-classifiers-perceptual-similarity.txt"
# Docs that state the paper's findings. Every perceptual-score-like figure (60.0-80.0, one decimal)
# they name must be in the paper's text, and each such line must cite where (table/section/figure).
PAPER_CLAIM_DOCS = ["README.md", "docs/index.md", "docs/concepts.md", "docs/faq.md"]


def test_paper_figures_in_docs_are_the_papers():
    import re

    if not PAPER.is_file():
        pytest.skip(f"the paper's text is not at {PAPER} (shared data absent)")
    paper = PAPER.read_text()
    for doc in PAPER_CLAIM_DOCS:
        # a table row or a paragraph: the unit that must carry the citation
        for block in re.split(r"\n\s*\n|\n(?=\|)", (ROOT / doc).read_text()):
            figures = [f for f in re.findall(r"(?<![\d.])(\d{2}\.\d)(?![\d%])", block) if 60 <= float(f) <= 80]
            for f in figures:
                assert f in paper, f"{doc}: {f} is not a figure in the paper: {block.strip()[:200]}"
            if figures:
                assert re.search(r"Table \d|sec\. \d|Fig\. \d|app\. [A-Z]|App\. [A-Z]", block), \
                    f"{doc}: a paper figure without its table/section: {block.strip()[:200]}"


def test_repo_paths_named_in_docs_exist():
    # A renamed script or results file must not leave docs pointing at nothing (docs/performance.md
    # once named a benchmark that never existed).
    # The changelog is history: it may name a file that a later entry says was removed or replaced.
    root = ROOT
    changelog = (root / "CHANGELOG.md").read_text()
    entries = re.split(r"\n(?=- )|\n\s*\n", changelog)
    gone = {name for entry in entries if re.search(r"\b(removed|replaces|goes|gone)\b", entry, re.I)
            for name in re.findall(r"([\w-]+\.(?:py|json|sh))", entry)}
    missing = []
    for doc in [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").rglob("*.md"))]:
        for path in re.findall(r"\b((?:benchmarks|examples|tests|scripts)/[\w./-]+\.(?:py|json|sh))", doc.read_text()):
            if not (root / path).exists() and not (doc.name == "CHANGELOG.md" and path.rsplit("/", 1)[-1] in gone):
                missing.append(f"{doc.relative_to(root)}: {path}")
    assert not missing, missing
