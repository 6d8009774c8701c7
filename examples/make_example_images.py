"""Write the example images the README uses: crops of a public-domain photograph.

Source: ``skimage.data.astronaut()`` (astronaut Eileen Collins, NASA photograph, public domain),
shipped inside scikit-image. Run ``pip install scikit-image`` once, then
``python examples/make_example_images.py``; the files are committed, so users never need to.

Writes ``examples/images/``: ``ref.png`` (a 128x128 crop), ``blur.png`` (Gaussian blur, sigma 1.5),
``noise.png`` (Gaussian noise, std 0.08), ``jpeg.png`` (JPEG quality 10) and ``shift.png`` (the
crop taken 3 px to the right).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    from skimage.data import astronaut

    photo = astronaut()  # 512x512x3 uint8
    top, left, size = 60, 170, 128  # the face and helmet
    ref = Image.fromarray(photo[top:top + size, left:left + size])
    shift = Image.fromarray(photo[top:top + size, left + 3:left + 3 + size])
    blur = ref.filter(ImageFilter.GaussianBlur(1.5))
    rng = np.random.default_rng(0)
    noisy = np.asarray(ref) / 255 + rng.normal(0, 0.08, (size, size, 3))
    noise = Image.fromarray((noisy.clip(0, 1) * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    ref.save(buf, format="JPEG", quality=10)
    jpeg = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    OUT.mkdir(exist_ok=True)
    for name, im in [("ref", ref), ("blur", blur), ("noise", noise), ("jpeg", jpeg), ("shift", shift)]:
        im.save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
