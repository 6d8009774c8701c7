"""The helpers the ``lpips`` package exports, with the same semantics, so ``import lowps as lpips``
runs lpips's own example scripts (``load_image`` -> ``im2tensor`` -> ``LPIPS(...)``).

Images are numpy H x W x 3 arrays (uint8 in [0, 255] unless stated); tensors are 1 x 3 x H x W in
[-1, 1], as in lpips. Two deliberate differences: ``load_image`` reads with Pillow (honouring EXIF
orientation) instead of OpenCV, giving the same RGB uint8 array for ordinary files without needing
``cv2``; ``dssim`` uses ``skimage.metrics.structural_similarity`` (lpips calls
``skimage.measure.compare_ssim``, which current scikit-image no longer has).
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["normalize_tensor", "l2", "psnr", "dssim", "rgb2lab", "tensor2np", "np2tensor", "tensor2tensorlab",
           "tensorlab2tensor", "load_image", "tensor2im", "im2tensor", "tensor2vec", "voc_ap"]


def normalize_tensor(in_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length across channels, as lpips: ``x / (sqrt(sum_c x^2) + eps)`` (NaN gradient at 0, as there)."""
    return in_feat / (torch.sqrt(torch.sum(in_feat ** 2, dim=1, keepdim=True)) + eps)


def l2(p0: np.ndarray, p1: np.ndarray, range: float = 255.0) -> float:  # noqa: A002 (lpips's name)
    """Half the mean squared difference on [0, 1]-scaled images."""
    return float(0.5 * np.mean((p0 / range - p1 / range) ** 2))


def psnr(p0: np.ndarray, p1: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    return float(10 * np.log10(peak ** 2 / np.mean((1.0 * p0 - 1.0 * p1) ** 2)))


def dssim(p0: np.ndarray, p1: np.ndarray, range: float = 255.0) -> float:  # noqa: A002
    """Structural dissimilarity ``(1 - SSIM) / 2`` over RGB (needs scikit-image)."""
    from skimage.metrics import structural_similarity

    return float((1 - structural_similarity(p0, p1, data_range=range, channel_axis=-1)) / 2.0)


def rgb2lab(in_img: np.ndarray, mean_cent: bool = False) -> np.ndarray:
    """CIE Lab of an RGB image (scikit-image); ``mean_cent`` subtracts 50 from L."""
    from skimage import color

    img_lab = color.rgb2lab(in_img)
    if mean_cent:
        img_lab[:, :, 0] = img_lab[:, :, 0] - 50
    return img_lab


def _check_ndim(x: object, ndim: int, fn: str, want: str) -> None:
    got = getattr(x, "ndim", None)
    if got != ndim:
        from .inputs import InputError

        raise InputError(f"{fn} takes {want}, got {got} dims with shape {tuple(getattr(x, 'shape', ()))}")


def tensor2np(tensor_obj: torch.Tensor) -> np.ndarray:
    """The first image of a batch as H x W x C float numpy."""
    _check_ndim(tensor_obj, 4, "tensor2np", "an N x C x H x W tensor")
    return tensor_obj[0].cpu().float().numpy().transpose((1, 2, 0))


def np2tensor(np_obj: np.ndarray) -> torch.Tensor:
    """An H x W x C array as a 1 x C x H x W float tensor."""
    _check_ndim(np_obj, 3, "np2tensor", "an H x W x C array")
    return torch.Tensor(np_obj[:, :, :, np.newaxis].transpose((3, 2, 0, 1)))


def tensor2tensorlab(image_tensor: torch.Tensor, to_norm: bool = True, mc_only: bool = False) -> torch.Tensor:
    """A [-1, 1] RGB tensor as a Lab tensor (L - 50, all / 100 when ``to_norm``)."""
    from skimage import color

    img_lab = color.rgb2lab(tensor2im(image_tensor))
    if mc_only:
        img_lab[:, :, 0] = img_lab[:, :, 0] - 50
    if to_norm and not mc_only:
        img_lab[:, :, 0] = img_lab[:, :, 0] - 50
        img_lab = img_lab / 100.0
    return np2tensor(img_lab)


def tensorlab2tensor(lab_tensor: torch.Tensor,
                     return_inbnd: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `tensor2tensorlab`; with ``return_inbnd`` also the in-gamut mask."""
    import warnings

    from skimage import color

    lab = tensor2np(lab_tensor) * 100.0
    lab[:, :, 0] = lab[:, :, 0] + 50
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb_back = 255.0 * np.clip(color.lab2rgb(lab.astype("float")), 0, 1)
        if not return_inbnd:
            return im2tensor(rgb_back)
        lab_back = color.rgb2lab(rgb_back.astype("uint8"))
    mask = 1.0 * np.isclose(lab_back, lab, atol=2.0)
    mask = np2tensor(np.prod(mask, axis=2)[:, :, np.newaxis])
    return im2tensor(rgb_back), mask


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an RGB uint8 H x W x 3 array (Pillow; EXIF orientation applied)."""
    from .inputs import load_image as _load

    x = _load(path)  # (3, H, W) float in [0, 1], one decoder for all of lowps
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def tensor2im(image_tensor: torch.Tensor, imtype: type = np.uint8, cent: float = 1.0,
              factor: float = 255.0 / 2.0) -> np.ndarray:
    """The first image of a [-1, 1] batch as an H x W x C array in [0, 255] (truncated, as lpips)."""
    _check_ndim(image_tensor, 4, "tensor2im", "an N x C x H x W tensor (for one C x H x W image: x[None])")
    image_numpy = image_tensor[0].cpu().float().numpy()
    return ((np.transpose(image_numpy, (1, 2, 0)) + cent) * factor).astype(imtype)


def im2tensor(image: np.ndarray, imtype: type = np.uint8, cent: float = 1.0, factor: float = 255.0 / 2.0
              ) -> torch.Tensor:
    """An H x W x C [0, 255] array as a 1 x C x H x W tensor in [-1, 1] (H x W greyscale: repeated to 3
    channels, as lowps's image loader does)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    _check_ndim(image, 3, "im2tensor", "an H x W x C array (or H x W greyscale)")
    return torch.Tensor((image / factor - cent)[:, :, :, np.newaxis].transpose((3, 2, 0, 1)))


def tensor2vec(vector_tensor: torch.Tensor) -> np.ndarray:
    """N x C x 1 x 1 -> N x C numpy."""
    return vector_tensor.data.cpu().numpy()[:, :, 0, 0]


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """VOC average precision; ``use_07_metric`` for the 11-point version (lpips's signature)."""
    if use_07_metric:
        return float(sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11.0
                         for t in np.arange(0.0, 1.1, 0.1)))
    from .scoring import voc_ap as _voc

    return _voc(np.asarray(rec), np.asarray(prec))
