"""What a supernet is of: an experiment's space, data, parent and base recipe, and the
configs of its sub-networks. ``DIR/supernet.json`` records it, so that evaluation, extraction
and a resumed training use the supernet's own experiment."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nars.errors import UserError
from nars.fileio import atomic_write_text
from nars.search.driver import Search
from nars.search.warm_start import fingerprint
from nars.supernet.subnets import complete, largest
from search_spaces import SearchSpace

META_FILE = "supernet.json"
VERSION = 1  # of the supernet's checkpoint layout and sub-network rules


@dataclass
class Supernet:
    """An experiment's supernet setup: its checked search context and base candidate."""

    exp: dict[str, Any]
    search: Search
    base: dict[str, Any]  # the candidate whose recipe every sub-network trains and is evaluated with

    @property
    def space(self) -> SearchSpace:
        return self.search.space

    @property
    def largest(self) -> dict[str, Any]:
        return largest(self.space)

    def config(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """The complete config of sub-network ``arch``: the base recipe, at the verify budget."""
        return self.search.trial_config(complete(self.space, arch, self.base), "verify")

    def meta(self) -> dict[str, Any]:
        """What the supernet's checkpoints and ``supernet.json`` record, and resuming checks."""
        return {"version": VERSION, "experiment": self.exp, "fingerprint": fingerprint(self.exp, self.space),
                "largest": self.largest, "base": self.base}


def build(exp: Mapping[str, Any], out_dir: Path, progress: bool = True) -> Supernet:
    """The supernet setup of an experiment, checked (space, data, parent, reference)."""
    return of_search(Search(copy.deepcopy(dict(exp)), out_dir, progress, latency=False))


def of_search(search: Search) -> Supernet:
    """The supernet of a search's experiment (``nars search`` with ``stage1.fidelity supernet``)."""
    exp = search.exp
    ref = exp["verify"]["reference"]
    base = search.space.references.get(ref)
    if base is None:
        known = ", ".join(search.space.references) or "none"
        raise UserError(f"supernet: verify.reference {ref!r} is not a reference of space {search.space.name} "
                        f"(known: {known}); its recipe is the one every sub-network trains with")
    largest(search.space)  # every architecture parameter has a largest value, or a clear error
    return Supernet(exp, search, base)


def write_meta(out_dir: Path, net: Supernet) -> None:
    atomic_write_text(out_dir / META_FILE, json.dumps(net.meta(), indent=2) + "\n", "the supernet's description")


def read_meta(out_dir: Path) -> dict[str, Any]:
    """``DIR/supernet.json``, or a one-line error naming what is wrong."""
    path = Path(out_dir) / META_FILE
    if not path.is_file():
        raise UserError(f"{out_dir}: not a supernet folder (no {META_FILE}; make one with nars supernet train)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION or "experiment" not in meta:
        raise UserError(f"{path}: not a version {VERSION} supernet description")
    return meta


def load(out_dir: Path, progress: bool = True) -> Supernet:
    """The setup a supernet folder was trained with."""
    return build(read_meta(out_dir)["experiment"], Path(out_dir), progress)
