"""Shared by tests/accel: random BatchNorm statistics, an accelerated ResNet-6, a relative closeness test."""
import timm
import torch

from lowps.accel import accelerate


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    # Relative to the largest value: deep random nets reach large activations.
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max())


def _with_random_bn_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Fresh BNs are identities (and zero-gamma branches vanish): give every BN non-trivial statistics.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean = 0.2 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model.eval()


def fast_resnet6(dtype=torch.float64):
    """ResNet-6 with random BN statistics in its accelerated form (frozen, channels_last)."""
    model = accelerate(_with_random_bn_statistics(timm.create_model("resnet6", num_classes=0)))
    return model.requires_grad_(False).to(dtype=dtype, memory_format=torch.channels_last)
