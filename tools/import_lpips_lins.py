"""Re-package the LPIPS linear layers (Zhang et al. 2018) shipped in the `lpips` wheel as safetensors.

Reads lpips/weights/v{0.0,0.1}/{alex,vgg,squeeze}.pth from the installed `lpips` package (BSD-2-Clause,
(c) 2018 the LPIPS authors), writes src/lowps/weights/files/lpips_{net}_v{version}.safetensors with keys
lin{k}.weight, and registers them as embedded entries `lpips-{net}-v{version}`, so lowps.LPIPS works offline.

    pip install lpips==0.1.4 && python tools/import_lpips_lins.py
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import lpips
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "src" / "lowps" / "weights" / "files"
SRC = Path(lpips.__file__).parent / "weights"
UPSTREAM = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v{v}/{net}.pth"

for version in ("0.0", "0.1"):
    for net in ("alex", "vgg", "squeeze"):
        pth = SRC / f"v{version}" / f"{net}.pth"
        state = torch.load(pth, map_location="cpu", weights_only=True)
        lins = {k.replace(".model.1.", "."): v.float().contiguous() for k, v in state.items()}
        out = FILES / f"lpips_{net}_v{version.replace('.', '')}.safetensors"
        FILES.mkdir(parents=True, exist_ok=True)
        save_file(lins, str(out), metadata={"arch": net, "source": f"lpips {lpips.__version__ if hasattr(lpips, '__version__') else '0.1.4'} {pth.name}"})
        sha_src = hashlib.sha256(pth.read_bytes()).hexdigest()
        subprocess.run([sys.executable, str(ROOT / "tools" / "manifest.py"), str(out), "--name", f"lpips-{net}-v{version}",
                        "--arch", net, "--kind", "head", "--embed", "--license", "BSD-2-Clause (c) 2018 the LPIPS authors",
                        "--source", f"lpips 0.1.4 wheel, lpips/weights/v{version}/{net}.pth (sha256 {sha_src}); "
                        f"upstream {UPSTREAM.format(v=version, net=net)}",
                        "--recipe", "Zhang et al. 2018: 2AFC on BAPPS train with a Dist2Logit ranking loss"], check=True)
