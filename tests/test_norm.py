"""NaiveSyncBN / SyncBN over 2 gloo processes equal BatchNorm over the whole batch."""

import math
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


def _rounding_bounds(x: torch.Tensor, upstream: torch.Tensor, bn: torch.nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    """How far two float32 computations of training-mode batch norm may differ (its
    statistics summed in another order: per worker, then all-reduced), per value.

    A sum of n terms rounds by about sqrt(n) u times the sum of their magnitudes (rounding
    errors add in quadrature, tests/rounding.py); two computations, each so, differ by sqrt(n)
    EPS. The statistics' errors then propagate to first order: x_hat = (x - mean) / sigma,
    sigma = sqrt(var + eps) with var = E[x^2] - mean^2; y = gamma x_hat + beta; the input's
    gradient is gamma / sigma (g - mean(g) - x_hat mean(g x_hat)); gamma's is sum(g x_hat)."""
    eps, dims = torch.finfo(torch.float32).eps, (0, 2, 3)
    x, g = x.detach().double(), upstream.double()
    per_channel = lambda t: t.reshape(1, -1, 1, 1)  # noqa: E731
    sums = math.sqrt(x.numel() // x.shape[1]) * eps  # relative error of a channel's sum
    mean, square = x.mean(dims), (x * x).mean(dims)
    var = square - mean * mean
    sigma = per_channel((var + bn.eps).sqrt())
    gamma, beta = per_channel(bn.weight.detach().double().abs()), per_channel(bn.bias.detach().double().abs())
    d_mean = sums * x.abs().mean(dims)
    d_var = sums * (square + 2 * mean.abs() * x.abs().mean(dims)) + 2 * eps * square
    d_sigma = per_channel(d_var) / (2 * sigma)
    x_hat = (x - per_channel(mean)) / sigma
    d_x_hat = (per_channel(d_mean) + x_hat.abs() * d_sigma) / sigma
    y = gamma * x_hat + beta
    grad = gamma / sigma * (g - per_channel(g.mean(dims)) - x_hat * per_channel((g * x_hat).mean(dims)))
    d_g_mean = sums * g.abs().mean(dims)
    d_gx_mean = sums * (g * x_hat).abs().mean(dims) + (g.abs() * d_x_hat).mean(dims)
    return {
        "y": gamma * d_x_hat + 2 * eps * (y.abs() + beta),
        "grad": (gamma / sigma * (per_channel(d_g_mean) + x_hat.abs() * per_channel(d_gx_mean)
                                  + per_channel((g * x_hat).mean(dims).abs()) * d_x_hat)
                 + grad.abs() * d_sigma / sigma + 2 * eps * grad.abs()),
        "weight_grad": sums * (g * x_hat).abs().sum(dims) + (g.abs() * d_x_hat).sum(dims),
        "mean": bn.momentum * d_mean + 2 * eps * mean.abs(),  # running stats: (1 - m) old + m new
        "var": bn.momentum * d_var + 2 * eps * ((1 - bn.momentum) + bn.momentum * var),
    }


@pytest.mark.parametrize("cls_name", ["naive", "sync"])
def test_two_gloo_workers_equal_whole_batch_batchnorm(tmp_path, cls_name):
    mp.spawn(_worker, args=(2, _free_port(), cls_name, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    ref = _init_bn(torch.nn.BatchNorm2d(C)).train()
    x = _batch().requires_grad_(True)
    y = ref(x)
    (y * _weights()).sum().backward()
    # detectron2 updates the running variance with the biased variance
    biased = 0.9 * torch.ones(C) + 0.1 * x.detach().var(dim=(0, 2, 3), unbiased=False)
    bound = _rounding_bounds(x, _weights(), ref)
    # affine gradients: each worker holds its share, DDP would sum them
    got = {"y": torch.cat([p["y"] for p in parts]), "grad": torch.cat([p["grad"] for p in parts]),
           "weight_grad": parts[0]["weight_grad"] + parts[1]["weight_grad"]}
    expected = {"y": y.detach(), "grad": x.grad, "weight_grad": ref.weight.grad, "mean": ref.running_mean,
                "var": biased}
    for p in parts:
        for key, value in {**got, "mean": p["mean"], "var": p["var"]}.items():
            assert value.shape == expected[key].shape
            assert ((value - expected[key]).abs() <= bound[key]).all(), key


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
