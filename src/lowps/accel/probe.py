"""The one capability probe of `lowps.accel`: what this CPU and PyTorch build are, and from that
which fast path each module swap takes. Every vendor or ISA rule of lowps is in this file.

Facts are read once, at import: the functions return module constants, which torch.compile and
torch.export treat as constants (no file reads or caches to trace), and no compiler module is
imported on the call path.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["cpu_info", "cpu_vendor", "native_avx512", "native_low_precision", "packed_ops_work",
           "gemm_grad_pays", "small_map_nchw_pays", "stem_conv_mode", "stem_input_grad_mode"]


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``vendor_id``, ``model name``, ``cpu family``,
    ``model``, ``flags``, ...); empty where there is none (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


# Both facts are read once, when this module is imported: the functions below then return plain module
# constants, which torch.compile/export treat as constants (no file reads or caches to trace), and no
# compiler module is imported on the call path (torch.compiler.assume_constant_result imported
# torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR in the process's environment).
_VENDOR = cpu_info().get("vendor_id", "")
_NATIVE_AVX512 = torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...); "" where unknown."""
    return _VENDOR


def native_avx512() -> bool:
    """Whether this CPU runs PyTorch's AVX-512 kernels (oneDNN then picks its AVX-512 convolutions)."""
    return _NATIVE_AVX512



def native_low_precision(precision: str, device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs ``precision`` convolutions faster than fp32: always on GPUs; on CPUs
    bf16 needs AMX, or AVX-512 BF16 on a non-Intel CPU; fp16 needs AMX-FP16. Measured
    (docs/performance.md): AVX2-only CPUs emulate bf16 (4-11x slower than fp32); an AMD EPYC with
    AVX-512 BF16 ran the default metric ~1.45x faster in bf16; an Intel Xeon with AVX-512 BF16 but
    no AMX ran it at 0.74x its fp32 speed; with AMX bf16 convs run at 8x fp32's."""
    device = torch.device(device)
    if precision == "fp32" or device.type != "cpu":
        return True
    cpu = torch.cpu
    if precision == "bf16":
        if cpu._is_amx_tile_supported():
            return True
        return bool(cpu._is_avx512_bf16_supported()) and cpu_vendor() != "GenuineIntel"
    return bool(cpu._is_amx_fp16_supported())


@functools.cache
def packed_ops_work() -> bool:
    """Whether oneDNN's prepacked conv ops (private ops of PyTorch's CPU build, used by inductor's
    freezing) exist in this PyTorch and give the plain convs' values: checked once on a tiny conv, so a
    build without them, or a release that changed them, takes the plain convs instead of failing."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        mk = torch.ops.mkldnn
        with torch.inference_mode(False), torch.no_grad():
            gen = torch.Generator().manual_seed(0)  # not the global RNG
            x = torch.rand(2, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
            w = torch.randn(16, 8, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
            b = torch.randn(16, generator=gen)
            pw = mk._reorder_convolution_weight(w, [1, 1], [2, 2], [1, 1], 1, list(x.shape))
            y = mk._convolution_pointwise(x, pw, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
            g = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
            pt = mk._reorder_convolution_transpose_weight(w, [1, 1], [0, 0], [2, 2], [1, 1], 1, list(g.shape))
            gx = mk._convolution_transpose_pointwise(g, pt, None, [1, 1], [0, 0], [2, 2], [1, 1], 1, "none", [], "")
            return bool(torch.allclose(y, F.conv2d(x, w, b, 2, 1).relu(), rtol=1e-4, atol=1e-5)
                        and torch.allclose(gx, F.conv_transpose2d(g, w, None, 2, 1), rtol=1e-4, atol=1e-5))
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False


def gemm_grad_pays() -> bool:
    """Small-map input gradients as one matrix product (`lowps.accel.gemm_grad`): on Intel CPUs with
    AVX-512. For ResNet-6's 4x4 -> 2x2 conv oneDNN's backward-data kernel took 4.7 ms against the
    product's 2.2 on an Intel Xeon (AVX-512); on an AMD EPYC with AVX-512 (Zen 5) 2.3-2.5 ms against
    2.6, and on AVX2 CPUs the step was no faster (docs/performance.md)."""
    return native_avx512() and cpu_vendor() == "GenuineIntel"


def small_map_nchw_pays(packed_applies: bool) -> bool:
    """Small maps (<= 64 pixels) convolved NCHW (`lowps.accel.small_map`) on AVX-512 CPUs, except AMD
    ones where the prepacked channels_last conv runs (``packed_applies``). oneDNN's AVX-512
    channels_last kernels are slow on small maps (ResNet-6's 4x4 -> 2x2 conv ~1.8x faster NCHW on an
    Intel Xeon); its AVX2 kernels are the other way round (NCHW 1.3-1.6x slower on an AMD EPYC); on
    an AMD EPYC with AVX-512 (Zen 4) the packed channels_last conv was faster in every case."""
    if not native_avx512():
        return False
    return cpu_vendor() != "AuthenticAMD" or not packed_applies


def stem_conv_mode(device: torch.device) -> str:
    """How the fused stem's 7x7/2 conv runs: ``"width_im2col"`` (column taps unrolled into channels,
    ~1.2x faster on AVX2 CPUs) on CPUs without AVX-512, ``"direct"`` elsewhere."""
    return "width_im2col" if device.type == "cpu" and not native_avx512() else "direct"


def stem_input_grad_mode(device: torch.device) -> str:
    """The stem's input gradient on the loss path: ``"polyphase"`` on CPUs (2.6x faster than oneDNN's
    backward-data kernel on an AVX-512 Xeon, 2.4x on an AVX2 EPYC), ``"autograd"`` on GPUs (not
    measured there)."""
    return "polyphase" if device.type == "cpu" else "autograd"
