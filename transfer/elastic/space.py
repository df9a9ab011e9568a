"""The elastic trunk's search space: per-block expansion widths and per-stage depths, as data.

A sub-network (:class:`SubnetArch`) keeps every block's input/output channels and the neck, so
the contract maps ``p3/p4/p5`` keep their channels and strides and every head runs on it. What
changes:

* ``widths``: per block, a fraction of its full expanded (hidden) width, one of
  :attr:`ElasticSpace.width_choices` (rounded up to a multiple of ``round_to``); blocks without an
  expand conv (hidden = input) stay full;
* ``depths``: per stage, how many of its blocks run; only trailing blocks are dropped, and only
  stride-1 residual ones (the first block of a stage changes shape and always runs).

The largest sub-network is the full trunk; :meth:`ElasticSpace.trunk_config` turns any sub-network
into the plain :class:`~shared.trunk.TrunkConfig` it exports as.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

from shared.backbone import BackboneConfig
from shared.errors import ConfigError
from shared.trunk import TrunkConfig

#: Named sub-networks accepted wherever an architecture is (``--arch``).
NAMED_ARCHS = ("largest", "smallest")


@dataclass(frozen=True)
class SubnetArch:
    """One sub-network of an :class:`ElasticSpace`.

    Attributes:
        depths: Blocks run per stage (``len == number of stages``).
        widths: Fraction of the full hidden width per block (``len == number of blocks``); canonical
            form (:meth:`ElasticSpace.canonical`) sets dropped blocks to 1.0.
    """

    depths: tuple[int, ...]
    widths: tuple[float, ...]

    def to_dict(self) -> dict:
        """JSON form (recorded in ``variant.json`` and the search state)."""
        return {"depths": list(self.depths), "widths": list(self.widths)}

    @staticmethod
    def from_dict(data: dict) -> SubnetArch:
        """Inverse of :meth:`to_dict`."""
        return SubnetArch(tuple(int(d) for d in data["depths"]), tuple(float(w) for w in data["widths"]))

    def key(self) -> str:
        """Compact, stable identity, e.g. ``d1.2.3.4.3.3.1-w1,.5,...``."""
        return "d" + ".".join(map(str, self.depths)) + "-w" + ",".join(f"{w:g}" for w in self.widths)


@dataclass(frozen=True)
class ElasticSpace:
    """Per-block width and per-stage depth choices over a trunk's backbone.

    Attributes:
        base: The full trunk (the largest sub-network).
        width_choices: Fractions of each block's full hidden width (sorted, ending at 1.0).
        max_drop: Most trailing blocks dropped per stage: 1 for stages of <= 3 blocks, this for longer ones.
        round_to: Hidden widths are rounded up to a multiple of this (at least ``round_to``).
    """

    base: TrunkConfig
    width_choices: tuple[float, ...] = (0.5, 0.75, 1.0)
    max_drop: int = 2
    round_to: int = 8

    def __post_init__(self):
        wc = tuple(sorted(float(w) for w in self.width_choices))
        if not wc or wc[-1] != 1.0 or wc[0] <= 0.0:
            raise ConfigError(f"width_choices must lie in (0, 1] and include 1.0, got {self.width_choices}")
        object.__setattr__(self, "width_choices", wc)
        if self.max_drop < 0 or self.round_to < 1:
            raise ConfigError(f"max_drop must be >= 0 and round_to >= 1, got {self.max_drop}, {self.round_to}")

    # --- structure -------------------------------------------------------------------------
    @property
    def backbone(self) -> BackboneConfig:  # noqa: D102
        return self.base.backbone

    def full_hidden(self) -> tuple[int, ...]:
        """Full expanded width of every block."""
        return tuple(self.backbone.hidden or self.backbone.default_hidden())

    def stage_blocks(self) -> list[range]:
        """Block indices of every stage."""
        out, start = [], 0
        for st in self.backbone.stages:
            out.append(range(start, start + st.depth))
            start += st.depth
        return out

    def elastic_block(self, i: int) -> bool:
        """Whether block ``i`` has an expand conv (so its hidden width can shrink)."""
        cin, _, _, expand = self.backbone.block_io()[i]
        return self.full_hidden()[i] != cin or expand != 1

    def depth_choices(self) -> list[tuple[int, ...]]:
        """Allowed depths per stage (trailing stride-1 residual blocks may be dropped)."""
        out = []
        for st, blocks in zip(self.backbone.stages, self.stage_blocks()):
            io = self.backbone.block_io()
            residual = [i for i in blocks if i != blocks[0] and io[i][0] == io[i][1] and io[i][2] == 1]
            drop = min(len(residual), 1 if st.depth <= 3 else self.max_drop)
            out.append(tuple(range(st.depth - drop, st.depth + 1)))
        return out

    def width_options(self, i: int) -> tuple[float, ...]:
        """Width fractions of block ``i`` (``(1.0,)`` when it cannot shrink)."""
        return self.width_choices if self.elastic_block(i) else (1.0,)

    def hidden_of(self, i: int, fraction: float) -> int:
        """Hidden width of block ``i`` at ``fraction``: rounded up to ``round_to``, never above full."""
        full = self.full_hidden()[i]
        return min(full, max(self.round_to, math.ceil(full * fraction / self.round_to) * self.round_to))

    def active_blocks(self, arch: SubnetArch) -> list[int]:
        """Indices of the blocks ``arch`` runs, in order."""
        return [i for blocks, d in zip(self.stage_blocks(), arch.depths) for i in blocks[:d]]

    # --- sub-networks ----------------------------------------------------------------------
    def largest(self) -> SubnetArch:  # noqa: D102
        return SubnetArch(tuple(c[-1] for c in self.depth_choices()), tuple(1.0 for _ in self.full_hidden()))

    def smallest(self) -> SubnetArch:  # noqa: D102
        return self.canonical(SubnetArch(tuple(c[0] for c in self.depth_choices()),
                                         tuple(self.width_options(i)[0] for i in range(len(self.full_hidden())))))

    def canonical(self, arch: SubnetArch) -> SubnetArch:
        """``arch`` with dropped blocks at width 1.0 (two archs running the same blocks compare equal)."""
        active = set(self.active_blocks(arch))
        return replace(arch, widths=tuple(w if i in active else 1.0 for i, w in enumerate(arch.widths)))

    def validate(self, arch: SubnetArch) -> SubnetArch:
        """Check ``arch`` against the choices; returns its canonical form.

        Raises:
            ConfigError: Naming the first stage or block whose value is not a choice, and the choices.
        """
        depth_choices, n = self.depth_choices(), len(self.full_hidden())
        if len(arch.depths) != len(depth_choices) or len(arch.widths) != n:
            raise ConfigError(f"architecture {arch.key()} has {len(arch.depths)} depths and {len(arch.widths)} "
                              f"widths; this trunk has {len(depth_choices)} stages and {n} blocks")
        for s, (d, choices) in enumerate(zip(arch.depths, depth_choices)):
            if d not in choices:
                raise ConfigError(f"stage {s} depth {d} is not a choice; choose one of {list(choices)}")
        for i in self.active_blocks(arch):
            if not any(abs(arch.widths[i] - c) < 1e-9 for c in self.width_options(i)):
                raise ConfigError(f"block {i} width {arch.widths[i]:g} is not a choice; "
                                  f"choose one of {list(self.width_options(i))}")
        return self.canonical(arch)

    def parse(self, text: str) -> SubnetArch:
        """An architecture from ``largest``/``smallest`` or its JSON form ``{"depths": [..], "widths": [..]}``.

        Raises:
            ConfigError: On an unknown name or malformed / out-of-space JSON, naming the choices.
        """
        if text in NAMED_ARCHS:
            return getattr(self, text)()
        try:
            return self.validate(SubnetArch.from_dict(json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"unknown architecture {text!r}; choose one of {list(NAMED_ARCHS)} or give JSON "
                              f'{{"depths": [one of {[list(c) for c in self.depth_choices()]} per stage], '
                              f'"widths": [one of {list(self.width_choices)} per block]}}') from None

    def size(self) -> int:
        """Number of distinct sub-networks (canonical forms)."""
        total = 0
        for depths in itertools.product(*self.depth_choices()):
            arch = SubnetArch(depths, tuple(1.0 for _ in self.full_hidden()))
            total += math.prod(len(self.width_options(i)) for i in self.active_blocks(arch))
        return total

    def enumerate(self) -> Iterator[SubnetArch]:
        """Every sub-network once (use only when :meth:`size` is small)."""
        n = len(self.full_hidden())
        for depths in itertools.product(*self.depth_choices()):
            active = self.active_blocks(SubnetArch(depths, (1.0,) * n))
            for ws in itertools.product(*(self.width_options(i) for i in active)):
                widths = [1.0] * n
                for i, w in zip(active, ws):
                    widths[i] = w
                yield SubnetArch(depths, tuple(widths))

    def sample(self, rng: random.Random) -> SubnetArch:
        """A uniformly random choice per stage and block (canonical)."""
        depths = tuple(rng.choice(c) for c in self.depth_choices())
        widths = tuple(rng.choice(self.width_options(i)) for i in range(len(self.full_hidden())))
        return self.canonical(SubnetArch(depths, widths))

    def mutate(self, arch: SubnetArch, rng: random.Random, prob: float = 0.15) -> SubnetArch:
        """Each depth and width re-drawn with probability ``prob``."""
        depths = tuple(rng.choice(c) if rng.random() < prob else d for d, c in zip(arch.depths, self.depth_choices()))
        widths = tuple(rng.choice(self.width_options(i)) if rng.random() < prob else w
                       for i, w in enumerate(arch.widths))
        return self.canonical(SubnetArch(depths, widths))

    def crossover(self, a: SubnetArch, b: SubnetArch, rng: random.Random) -> SubnetArch:
        """Each depth and width taken from ``a`` or ``b`` at random."""
        depths = tuple(rng.choice(pair) for pair in zip(a.depths, b.depths))
        widths = tuple(rng.choice(pair) for pair in zip(a.widths, b.widths))
        return self.canonical(SubnetArch(depths, widths))

    def trunk_config(self, arch: SubnetArch) -> TrunkConfig:
        """The plain trunk ``arch`` exports as: stage depths cut, ``hidden`` set for the blocks that run."""
        arch = self.validate(arch)
        stages = tuple(replace(st, depth=d) for st, d in zip(self.backbone.stages, arch.depths))
        hidden = tuple(self.hidden_of(i, arch.widths[i]) for i in self.active_blocks(arch))
        return TrunkConfig(replace(self.backbone, stages=stages, hidden=hidden), self.base.channels)

    def to_dict(self) -> dict:
        """JSON form of the choices (recorded beside the supernet)."""
        return {"width_choices": list(self.width_choices), "max_drop": self.max_drop, "round_to": self.round_to,
                "depth_choices": [list(c) for c in self.depth_choices()], "size": self.size()}
