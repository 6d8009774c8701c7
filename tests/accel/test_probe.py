"""lowps.accel.probe: the one place that decides, from the CPU, which fast path runs."""
import pytest
import torch

from accel_helpers import fast_resnet6
from lowps.accel import probe


@pytest.mark.parametrize("vendor, avx512, expected", [("GenuineIntel", True, True), ("AuthenticAMD", True, False),
                                                      ("GenuineIntel", False, False), ("", True, False)])
def test_loss_gemm_input_grad_auto_is_for_intel_avx512(monkeypatch, vendor, avx512, expected):
    # "auto" takes the matrix product only where it was measured faster than oneDNN's kernel: Intel
    # AVX-512 (2.2 vs 4.7 ms); on an AMD EPYC with AVX-512 it was slower (2.6 vs 2.3-2.5 ms).
    monkeypatch.setattr(probe, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(probe, "native_avx512", lambda: avx512)
    last = fast_resnet6(torch.float32).stages[-1][0]
    assert last.loss_input_grad == "auto"
    assert last._gemm_grad_applies(torch.rand(2, 256, 4, 4, requires_grad=True)) is expected
    last.loss_input_grad = "gemm"  # an explicit choice holds on every CPU
    assert last._gemm_grad_applies(torch.rand(2, 256, 4, 4, requires_grad=True))


@pytest.mark.parametrize("vendor, avx512, packed, expected", [
    ("GenuineIntel", True, True, True), ("GenuineIntel", True, False, True), ("AuthenticAMD", True, True, False),
    ("AuthenticAMD", True, False, True), ("AuthenticAMD", False, True, False), ("GenuineIntel", False, False, False)])
def test_small_map_nchw_auto_by_vendor_isa_and_packed_weights(monkeypatch, vendor, avx512, packed, expected):
    # "auto" runs small maps NCHW on AVX-512 CPUs, except AMD ones where the prepacked channels_last
    # conv applies: measured faster there in every case (loss 1.06-1.17x, one pair 1.21x, less memory).
    monkeypatch.setattr(probe, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(probe, "native_avx512", lambda: avx512)
    monkeypatch.setattr(probe, "packed_ops_work", lambda: True)
    last = fast_resnet6(torch.float32).stages[-1][0]
    last.packed_weights = packed
    small = torch.rand(2, 256, 4, 4).contiguous(memory_format=torch.channels_last)
    assert last.small_map_nchw is None and last._small_map_nchw(small) is expected
    assert last._packed_applies(small) is (packed and not expected)  # exactly one path per call
    with torch.autocast("cpu", dtype=torch.bfloat16):  # no packed conv under autocast: NCHW on any AVX-512 CPU
        assert last._small_map_nchw(small) is avx512
    big = torch.rand(2, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    last.small_map_pixels = 64
    assert last._small_map_nchw(big) is False  # only maps of at most small_map_pixels
    for choice in (True, False):  # an explicit choice holds on every CPU
        last.small_map_nchw = choice
        assert last._small_map_nchw(small) is choice


@pytest.mark.parametrize("vendor, avx512_bf16, amx, native", [
    ("GenuineIntel", False, False, False), ("GenuineIntel", True, False, False), ("GenuineIntel", True, True, True),
    ("AuthenticAMD", True, False, True), ("AuthenticAMD", False, False, False), ("", True, False, True)])
def test_native_bf16_on_cpu(monkeypatch, vendor, avx512_bf16, amx, native):
    # measured (docs/performance.md): AVX-512 BF16 alone is slower than fp32 on an Intel Xeon without
    # AMX, faster on an AMD EPYC; AMX is fast; AVX2 emulates
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(probe, "cpu_vendor", lambda: vendor)
    assert probe.native_low_precision("bf16", "cpu") is native
    assert probe.native_low_precision("fp32", "cpu") and probe.native_low_precision("bf16", "cuda")


def test_cpu_vendor_is_read():
    from pathlib import Path

    vendor = probe.cpu_vendor()
    assert isinstance(vendor, str)
    if Path("/proc/cpuinfo").is_file() and "vendor_id" in Path("/proc/cpuinfo").read_text():
        assert vendor
