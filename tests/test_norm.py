"""NaiveSyncBN / SyncBN over 2 gloo processes equal BatchNorm over the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nars.model.norm import NaiveSyncBatchNorm, SyncBatchNorm, freeze_norms, group_count

C = 6


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, C, 5, 7, generator=g) * 3 + 1


def _weights() -> torch.Tensor:  # a fixed upstream gradient, so input gradients are comparable
    return torch.randn(8, C, 5, 7, generator=torch.Generator().manual_seed(1))


def _init_bn(bn: torch.nn.BatchNorm2d) -> torch.nn.BatchNorm2d:
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, C))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, C))
    return bn


def _worker(rank: int, world: int, port: int, cls_name: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bn = _init_bn({"naive": NaiveSyncBatchNorm, "sync": SyncBatchNorm}[cls_name](C)).train()
        half = 8 // world
        x = _batch()[rank * half : (rank + 1) * half].clone().requires_grad_(True)
        y = bn(x)
        (y * _weights()[rank * half : (rank + 1) * half]).sum().backward()
        torch.save(
            {"y": y.detach(), "grad": x.grad, "weight_grad": bn.weight.grad, "mean": bn.running_mean, "var": bn.running_var},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cls_name", ["naive", "sync"])
def test_two_gloo_workers_equal_whole_batch_batchnorm(tmp_path, cls_name):
    mp.spawn(_worker, args=(2, _free_port(), cls_name, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    ref = _init_bn(torch.nn.BatchNorm2d(C)).train()
    x = _batch().requires_grad_(True)
    y = ref(x)
    (y * _weights()).sum().backward()

    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
    # affine gradients: each worker holds its share, DDP would sum them
    torch.testing.assert_close(parts[0]["weight_grad"] + parts[1]["weight_grad"], ref.weight.grad, rtol=1e-4, atol=1e-4)
    for p in parts:
        torch.testing.assert_close(p["mean"], ref.running_mean, rtol=1e-5, atol=1e-6)
        # detectron2 updates the running variance with the biased batch variance
        biased = 0.9 * torch.ones(C) + 0.1 * x.detach().var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(p["var"], biased, rtol=1e-5, atol=1e-5)


def test_outside_a_process_group_it_is_batchnorm():
    x = _batch()
    for cls in (NaiveSyncBatchNorm, SyncBatchNorm):
        bn, ref = _init_bn(cls(C)).train(), _init_bn(torch.nn.BatchNorm2d(C)).train()
        torch.testing.assert_close(bn(x), ref(x))
        torch.testing.assert_close(bn.running_var, ref.running_var)


def test_freeze_norms_keeps_statistics():
    bn = _init_bn(torch.nn.BatchNorm2d(C)).train()
    bn(_batch())
    seq = torch.nn.Sequential(torch.nn.Conv2d(C, C, 1), bn).eval()
    expected = seq(_batch())
    frozen = freeze_norms(seq)
    assert type(frozen[1]).__name__ == "FrozenBatchNorm2d"
    torch.testing.assert_close(frozen(_batch()), expected, rtol=1e-5, atol=1e-5)


def test_group_count_rule():
    assert [group_count(c, 32) for c in (64, 40, 24, 16, 112)] == [32, 8, 8, 16, 16]
