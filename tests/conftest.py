import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("LOWPS_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()
TINY = SHARED / "data" / "tiny-imagenet"
EXAMPLES = SHARED / "data" / "lpips-examples"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never touch the user's real cache.
    monkeypatch.setenv("LOWPS_HOME", str(tmp_path_factory.mktemp("lowps_home")))
    monkeypatch.delenv("LOWPS_OFFLINE", raising=False)


@pytest.fixture
def tiny_imagenet():
    if not (TINY / "val.zip").is_file():
        pytest.skip(f"Tiny ImageNet not found at {TINY} (shared data absent)")
    return TINY


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous), so parallel runs never collide."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pair(n=2, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype), torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def autograd_node_names(t):
    """Names of every autograd node behind ``t`` (a list: a name appears once per node)."""
    seen, todo, names = set(), [t.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo.extend(f for f, _ in node.next_functions)
    return names
