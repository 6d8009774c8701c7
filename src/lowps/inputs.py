"""The one input validator every lowps entry point uses (module, functional, LPIPS, CLI, scoring).

Bad input raises `InputError` (a ``ValueError``) that names the problem and the fix; nothing
here ever returns a silently wrong tensor.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ._modes import functorch_active

__all__ = ["InputError", "InputRangeWarning", "RangeCheck", "ImageLike", "load_image", "to_tensor", "check_range",
           "validate_pair", "parse_input_range", "validate_batch", "affine_normalisation"]

ImageLike = Union[torch.Tensor, np.ndarray, "os.PathLike[str]", str, Any]  # Any: PIL.Image.Image


#: Image file extensions the CLIs and dataset readers pick up from a folder (one list for all of lowps).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


class InputError(ValueError):
    """An input the metric cannot take; the message says what to change."""


def parse_input_range(input_range: tuple[float, float] | str) -> tuple[float, float]:
    """Normalise ``input_range``: a (low, high) pair, or the strings ``"0,1"`` / ``"-1,1"``."""
    if isinstance(input_range, str):
        try:
            lo, hi = (float(v) for v in input_range.split(","))
        except ValueError as e:
            raise InputError(f"input_range {input_range!r} is not 'low,high' (e.g. '0,1' or '-1,1')") from e
    else:
        try:
            lo, hi = (float(v) for v in input_range)
        except (TypeError, ValueError) as e:
            raise InputError(f"input_range must be a pair like (0, 1) or (-1, 1), got {input_range!r}") from e
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"input_range must be finite, got {(lo, hi)}; use (0, 1), (-1, 1) or (0, 255)")
    if not hi > lo:
        raise InputError(f"input_range must have low < high, got {(lo, hi)}")
    return lo, hi


def affine_normalisation(input_range: tuple[float, float], mean: tuple[float, ...], std: tuple[float, ...],
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each (1, C, 1, 1), with ``x * scale + shift == ((x - lo) / (hi - lo) - mean) / std``:
    the one map from a value range to a backbone's normalised input (metric, LPIPS trunks, training)."""
    lo, hi = parse_input_range(input_range)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return 1.0 / ((hi - lo) * s), -(lo / (hi - lo) + m) / s


#: The background that transparent pixels are composited over (straight alpha): white, as image
#: viewers show transparency on a page. Two images that differ only where alpha is 0 are equal.
ALPHA_BACKGROUND = 1.0


def pil_to_tensor(im: Any) -> torch.Tensor:
    """A PIL image as a float tensor (3, H, W) in [0, 1], at its full bit depth, as it displays.

    EXIF orientation is applied; 16-bit greyscale (``I;16``, ``I``) is scaled by 65535 and 32-bit
    float (``F``) taken as [0, 1] (not clipped to 8 bits, as ``convert("RGB")`` would); palette and
    greyscale images become RGB; alpha (RGBA, LA, PA, palette transparency) is composited over
    `ALPHA_BACKGROUND`.
    """
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        x = torch.from_numpy(np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0)[None]
    elif mode == "I":
        a = np.asarray(im, dtype=np.int64)
        peak = 65535.0 if a.max(initial=0) > 255 else 255.0  # PNG 16-bit greyscale often decodes as "I"
        x = torch.from_numpy(a.astype(np.float32) / peak)[None]
    elif mode == "F":
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())[None]
    else:
        if mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        elif mode == "PA":
            im = im.convert("RGBA")
        has_alpha = im.mode in ("RGBA", "LA")
        if not has_alpha and im.mode != "RGB":
            im = im.convert("RGB")
        a = np.asarray(im)
        x = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1) if a.ndim == 3 else \
            torch.from_numpy(a.astype(np.float32) / 255.0)[None]
        if has_alpha:
            color, alpha = x[:-1], x[-1:]
            x = color * alpha + ALPHA_BACKGROUND * (1 - alpha)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.contiguous()


def regular_file(path: str | os.PathLike[str], error: type[Exception] = None,  # type: ignore[assignment]
                 what: str = "file", where: str = "", missing: str = "{what} {path} does not exist") -> Path:
    """``path`` if it is an existing regular file, else ``error`` naming it: a folder, FIFO or device
    is refused before anything opens it (opening a FIFO blocks forever). Shared by every reader."""
    import stat

    error = error or InputError
    p = Path(path)
    prefix = f"{where}: " if where else ""
    try:
        st = p.stat()
    except OSError:
        raise error(prefix + missing.format(what=what, path=p)) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{prefix}{p} is not a regular file (a folder, FIFO or device); give a {what}")
    return p


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an image file as a float tensor (3, H, W) in [0, 1], as it displays (see `pil_to_tensor`).

    The one decoder for the module, the CLIs and every dataset reader. Refuses anything that is not
    a regular file (a FIFO or device would block the read forever).
    """
    from PIL import Image

    p = regular_file(path, InputError, "image file", missing="{what} not found: {path}")
    try:
        with Image.open(p) as im:
            im.load()
            x = pil_to_tensor(im)
    except Exception as e:  # PIL raises several types for unreadable files
        raise InputError(f"cannot read image {p}: {e}") from e
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"image {p} holds NaN or inf values")
    return x


def to_tensor(img: ImageLike, input_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Turn a tensor, PIL image, uint8 numpy array or file path into a float tensor.

    Tensors pass through unchanged (they must already be in ``input_range``). PIL images, uint8
    arrays (H x W or H x W x 3) and paths are read as [0, 1] and mapped onto ``input_range``.
    """
    if isinstance(img, torch.Tensor):
        return img
    if isinstance(img, (str, os.PathLike)):
        x = load_image(img)
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise InputError(
                f"numpy arrays must be uint8 images (H x W x 3 or H x W), got dtype {img.dtype}; "
                "for float data pass a torch tensor (N, 3, H, W) in input_range")
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3):
            raise InputError(f"numpy image must be H x W x 3 or H x W, got shape {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
    elif type(img).__module__.startswith("PIL."):
        x = pil_to_tensor(img)
    else:
        raise InputError(f"cannot use {type(img).__name__} as an image; pass a torch tensor, PIL image, "
                         "uint8 numpy array or file path")
    lo, hi = input_range
    return x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x


#: How far outside ``input_range`` values may lie and pass silently, as a fraction of the range's
#: width. Raw network outputs overshoot a little before any clamp (a denoiser's output in
#: [-0.06, 1.07] is typical early in training). Beyond it, values are still taken as they are, with
#: one `InputRangeWarning` per metric object, unless the data clearly follows another convention
#: ([-1, 1] or [0, 255] data declared as [0, 1]) on a metric's first call, which is an error.
OVERSHOOT = 0.1


class InputRangeWarning(UserWarning):
    """Values outside the declared ``input_range`` (beyond `OVERSHOOT`), taken as they are."""


def _values_of(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values as a plain tensor: detached, and under torch.func transforms (vmap, jacfwd, grad)
    unwrapped from their batched/grad-tracking wrappers, whose values cannot be read (``.item()``)
    inside the transform. The unwrapped tensor holds every vmapped sample, so all are checked."""
    x = x.detach()
    if functorch_active():
        f = torch._C._functorch
        while f.is_functorch_wrapped_tensor(x) or f.is_batchedtensor(x):
            x = f.get_unwrapped(x)
    return x


def _convention_hint(xmin: float, xmax: float, lo: float, hi: float, slack: float) -> str:
    """A hint where values clearly follow another convention than ``[lo, hi]``; else ``""``."""
    if (lo, hi) == (0.0, 1.0) and -1.1 <= xmin <= -0.5 and xmax <= 1.1:
        return " It looks like [-1, 1] data: pass input_range=(-1, 1)."
    if 2 <= xmax <= 255 * (1 + OVERSHOOT) and xmin >= lo - slack and hi - lo <= 2:
        return (" It looks like [0, 255] data: divide by 255." if (lo, hi) == (0.0, 1.0)
                else f" It looks like [0, 255] data: map it to [{lo:g}, {hi:g}] first "
                     f"(x / 255 * {hi - lo:g} + {lo:g}).")
    return ""


def check_range(x: torch.Tensor, input_range: tuple[float, float], name: str = "input",
                strict: bool = True) -> str | None:
    """Check ``x``'s values against ``input_range``: NaN/inf raise `InputError`; values within
    `OVERSHOOT` of the range return ``None``; values further out return a message describing them
    (callers warn with it, `RangeCheck`), except that with ``strict`` (a metric's first call) data
    that clearly follows another convention ([-1, 1] or [0, 255] data declared as [0, 1]) raises
    with a hint. Values are never clamped, so gradients stay intact.
    """
    if x.numel() == 0:
        return None
    lo, hi = input_range
    slack = (OVERSHOOT + 1e-6) * (hi - lo)  # + float32 rounding of the bounds themselves
    x = _values_of(x)
    with torch.no_grad():
        xmin, xmax = (float(v) for v in torch.aminmax(x))  # NaN propagates into min/max
    if lo - slack <= xmin and xmax <= hi + slack:
        return None
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or inf values")
    hint = _convention_hint(xmin, xmax, lo, hi, slack)
    if strict and hint:
        raise InputError(f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the declared input_range "
                         f"[{lo:g}, {hi:g}].{hint} Set input_range= to the range your images use.")
    return f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the declared input_range [{lo:g}, {hi:g}]"


class RangeCheck:
    """The range policy of one metric object (`PerceptualDistance`, `lowps.LPIPS`): on its first call,
    data that clearly follows another convention is an error (a [0, 255] data set fails at step 0);
    otherwise values outside the range are taken as they are, with one `InputRangeWarning` per object
    (a training run whose outputs drift must never stop on a range check)."""

    def __init__(self) -> None:
        self.first_call = True
        self.warned = False

    def __call__(self, x: torch.Tensor, input_range: tuple[float, float], name: str) -> None:
        msg = check_range(x, input_range, name, strict=self.first_call)
        if msg is not None and not self.warned:
            self.warned = True
            warnings.warn(f"{msg}; taking the values as they are (warned once per metric object). If these are "
                          "a network's raw outputs, clamp them for the perceptual term (x.clamp(lo, hi)); if your "
                          "data uses another range, pass input_range=; to skip value checks in a trusted loop, "
                          "check_inputs=False.", InputRangeWarning, stacklevel=5)

    def __getstate__(self) -> dict:
        return {"first_call": self.first_call, "warned": self.warned}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not x.is_floating_point():
        raise InputError(f"{name} has dtype {x.dtype}; pass a floating-point tensor in input_range "
                         "(for uint8 images: x.float() / 255 with input_range=(0, 1))")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise InputError(f"{name} must be (N, C, H, W) or (C, H, W), got {x.ndim} dims with shape {tuple(x.shape)}")
    if x.shape[1] == 1:  # greyscale: repeat to RGB, as the backbones expect three channels
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise InputError(f"{name} has {x.shape[1]} channels in dim 1 of shape {tuple(x.shape)}; expected 3 (RGB) "
                         "or 1 (greyscale). Channels-last data needs x.permute(0, 3, 1, 2)")
    return x


def validate_batch(img: torch.Tensor, input_range: tuple[float, float], *, name: str = "images",
                   min_size: int = 1, fixed_size: tuple[int, int] | None = None, multiple_of: int = 1,
                   check_values: bool = True, range_check: RangeCheck | None = None) -> torch.Tensor:
    """Validate one image batch and return it as (N, 3, H, W).

    Checks: floating dtype, 3 or 4 dims, 1 or 3 channels (1 is repeated to 3), the backbone's size
    limits, finite values, values in ``input_range`` (through ``range_check``, the calling metric's
    `RangeCheck`; a fresh one if ``None``).
    """
    x = _as_batch(img, name)
    if x.device.type == "meta":
        raise InputError(f"{name} is on the meta device (shapes only, no values); move it to cpu or cuda")
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"images of {h}x{w} are too small for this backbone: every side must be at least "
                         f"{min_size} px to reach its deepest layer (upsample them, or choose shallower layers=)")
    if fixed_size is not None and (h, w) != tuple(fixed_size):
        raise InputError(f"this backbone only takes {fixed_size[0]}x{fixed_size[1]} inputs, got {h}x{w}; "
                         "resize the images")
    if multiple_of > 1 and (h % multiple_of or w % multiple_of):
        raise InputError(f"image sides must be multiples of {multiple_of} (the patch size) for this backbone, "
                         f"got {h}x{w}; crop or resize them")
    if check_values:
        (range_check or RangeCheck())(x, input_range, name)
    return x


def validate_pair(img0: torch.Tensor, img1: torch.Tensor, input_range: tuple[float, float], *,
                  min_size: int = 1, fixed_size: tuple[int, int] | None = None, multiple_of: int = 1,
                  check_values: bool = True, range_check: RangeCheck | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an image pair (see `validate_batch`); both must also share shape and device."""
    x0, x1 = _as_batch(img0, "img0"), _as_batch(img1, "img1")
    if x0.shape != x1.shape:
        raise InputError(f"img0 and img1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}; "
                         "resize or crop them to one size first")
    if x0.device != x1.device:
        raise InputError(f"img0 is on {x0.device} and img1 on {x1.device}; move both to one device")
    check = range_check or RangeCheck()
    kw: dict[str, Any] = dict(min_size=min_size, fixed_size=fixed_size, multiple_of=multiple_of,
                              check_values=check_values, range_check=check)
    out = validate_batch(x0, input_range, name="img0", **kw), validate_batch(x1, input_range, name="img1", **kw)
    check.first_call = False
    return out
