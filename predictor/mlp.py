"""The FBNetV3 accuracy predictor: an MLP whose architecture encoder is pretrained on proxies.

Why: measured accuracies are few and expensive, MFLOPs and params are free. The encoder
(arch part of the encoding -> embedding) is first trained to predict log MFLOPs and log
params of many sampled candidates (``pretrain_encoder``); the predictor then starts from
it, concatenates the recipe part to the embedding, and trains a head on the measured
metrics, fine-tuning the encoder at a lower learning rate. An ensemble of members (each
its own random initialisation of what is not pretrained) gives a mean and a spread for
exploration.

Training on measured metrics is full-batch AdamW on standardised targets (the tables
are small, tens to thousands of rows); pretraining uses minibatches. CPU, one thread,
seconds. Seeds apply locally: the caller's torch random state is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from nars.errors import UserError
from nars.fileio import atomic_torch_save
from nars.model.weights import torch_load

FORMAT = "nars-predictor/1"


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny matrices: threads only add overhead, and on a shared CPU they wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic initialisation without touching the global torch random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def encoder_module(arch_dims: int, hidden: int, embed: int) -> nn.Sequential:
    return _mlp([arch_dims, hidden, embed], last_relu=True)


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _standardise(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per column. A constant column (every stage-1 AP 0, say) has nothing to
    learn: a tiny scale keeps predictions at the constant instead of the net's extrapolations
    in the target's own units (a unit scale once predicted AP 0.05-0.09 from two zeros)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    std = y.std(0)
    return y.mean(0), np.where(std > 0, std, 1e-9)


def _train(net: nn.Module, groups: list[dict[str, Any]], x: torch.Tensor, y: torch.Tensor, steps: int,
           weight_decay: float, batch: int | None = None, seed: int = 0) -> None:
    """AdamW with cosine decay on MSE; full batch unless ``batch`` is given."""
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with _one_thread():
        for _ in range(steps):
            idx = torch.randint(len(x), (batch,), generator=gen) if batch and batch < len(x) else slice(None)
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()


@dataclass
class ProxyEncoder:
    """An architecture encoder pretrained on proxy targets (by ``pretrain_encoder``)."""

    arch_dims: int
    hidden: int
    embed: int
    state: dict[str, torch.Tensor] = field(repr=False)

    def module(self) -> nn.Sequential:
        enc = encoder_module(self.arch_dims, self.hidden, self.embed)
        enc.load_state_dict(self.state)
        return enc

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[embedding of the arch part, recipe part]: pretrained features for other models."""
        x = np.asarray(x, dtype=np.float64)
        with torch.no_grad(), _one_thread():
            z = self.module()(_tensor(x[:, : self.arch_dims])).double().numpy()
        return np.hstack([z, x[:, self.arch_dims :]])


def pretrain_encoder(
    x_arch: np.ndarray,
    proxies: np.ndarray,
    *,
    hidden: int = 128,
    embed: int = 32,
    steps: int = 1500,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
) -> ProxyEncoder:
    """Fit encoder + linear head to standardised proxies (e.g. log MFLOPs, log params)."""
    mean, std = _standardise(proxies)
    y = _tensor((np.asarray(proxies).reshape(len(proxies), -1) - mean) / std)
    with _seeded(seed):
        encoder = encoder_module(x_arch.shape[1], hidden, embed)
        net = nn.Sequential(encoder, nn.Linear(embed, y.shape[1]))
    _train(net, [{"params": net.parameters(), "lr": lr}], _tensor(x_arch), y, steps, 0.0, batch, seed)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    return ProxyEncoder(x_arch.shape[1], hidden, embed, state)


class _Net(nn.Module):
    """encoder(arch part) ++ recipe part -> head -> targets."""

    def __init__(self, arch_dims: int, recipe_dims: int, hidden: int, embed: int, outputs: int):
        super().__init__()
        self.arch_dims = arch_dims
        self.encoder = encoder_module(arch_dims, hidden, embed)
        self.head = _mlp([embed + recipe_dims, hidden, outputs], last_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(x[:, : self.arch_dims]), x[:, self.arch_dims :]], dim=1))


class MLPPredictor:
    """Ensemble of encoder + head MLPs; ``encoder`` (pretrained) initialises every member's encoder."""

    name = "mlp"

    def __init__(
        self,
        arch_dims: int,
        *,
        encoder: ProxyEncoder | None = None,
        members: int = 4,
        hidden: int = 128,
        embed: int = 32,
        steps: int = 400,
        lr: float = 3e-3,
        encoder_lr_scale: float = 0.1,
        weight_decay: float = 1e-3,
        seed: int = 0,
    ):
        if encoder is not None:
            if encoder.arch_dims != arch_dims:
                raise UserError(f"the pretrained encoder reads {encoder.arch_dims} arch columns, not {arch_dims}")
            hidden, embed = encoder.hidden, encoder.embed
        self.arch_dims, self.encoder = arch_dims, encoder
        self.hparams = dict(members=members, hidden=hidden, embed=embed, steps=steps, lr=lr,
                            encoder_lr_scale=encoder_lr_scale, weight_decay=weight_decay, seed=seed)
        self.nets: list[_Net] = []
        self.dims = 0
        self.y_mean = self.y_std = np.zeros(0)

    def _net(self) -> _Net:
        h = self.hparams
        return _Net(self.arch_dims, self.dims - self.arch_dims, h["hidden"], h["embed"], len(self.y_mean))

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MLPPredictor":
        h = self.hparams
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        self.y_mean, self.y_std = _standardise(y)
        xt, yt = _tensor(x), _tensor((y - self.y_mean) / self.y_std)
        self.dims, self.nets = xt.shape[1], []
        for m in range(h["members"]):
            with _seeded(h["seed"] * 1000 + m):
                net = self._net()
            scale = 1.0
            if self.encoder is not None:
                net.encoder.load_state_dict(self.encoder.state)
                scale = h["encoder_lr_scale"]
            groups = [{"params": net.encoder.parameters(), "lr": h["lr"] * scale},
                      {"params": net.head.parameters(), "lr": h["lr"]}]
            _train(net, groups, xt, yt, h["steps"], h["weight_decay"], seed=h["seed"] * 1000 + m)
            self.nets.append(net)
        return self

    def predict(self, x: np.ndarray, return_std: bool = False) -> Any:
        """Mean over members [N, targets]; with ``return_std`` also the members' spread."""
        if not self.nets:
            raise RuntimeError("predict before fit")
        with torch.no_grad(), _one_thread():
            preds = torch.stack([net(_tensor(x)) for net in self.nets]).double().numpy()
        preds = preds * self.y_std + self.y_mean
        return (preds.mean(0), preds.std(0)) if return_std else preds.mean(0)

    def save(self, path: str | Path) -> None:
        """Tensors and plain values only (loadable with weights_only=True), written atomically;
        the pretrained encoder goes along, so a loaded predictor refits the same way."""
        if not self.nets:
            raise RuntimeError("save before fit")
        payload = {
            "format": FORMAT,
            "arch_dims": self.arch_dims,
            "dims": self.dims,
            "hparams": self.hparams,
            "encoder": None if self.encoder is None else vars(self.encoder),
            "y_mean": torch.as_tensor(self.y_mean),
            "y_std": torch.as_tensor(self.y_std),
            "members": [net.state_dict() for net in self.nets],
        }
        atomic_torch_save(path, payload)

    @classmethod
    def load(cls, path: str | Path) -> "MLPPredictor":
        payload = torch_load(path, "NARS predictor file")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise UserError(f"{path}: not a NARS predictor file (expected format {FORMAT})")
        encoder = None if payload["encoder"] is None else ProxyEncoder(**payload["encoder"])
        self = cls(payload["arch_dims"], encoder=encoder, **payload["hparams"])
        self.dims, self.y_mean, self.y_std = payload["dims"], payload["y_mean"].numpy(), payload["y_std"].numpy()
        for state in payload["members"]:
            net = self._net()
            net.load_state_dict(state)
            net.eval()
            self.nets.append(net)
        return self
