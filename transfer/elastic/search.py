"""Search for the latency / mAP Pareto front of the supernet's sub-networks (resumable).

Each candidate's objectives are its predicted batch-1 latency on the target device (lower is
better; :mod:`transfer.elastic.latency_model`) and the mean mAP of every head (higher is better;
:mod:`transfer.elastic.subnet_eval`). When the space holds no more sub-networks than the search
would evaluate, every one is evaluated (exhaustive); otherwise an evolutionary search runs:
seeds (largest, smallest, one step down from the largest, every uniform width at the deepest and
shallowest depths, random ones), then per generation the best ``population`` by non-dominated rank
(ties: spread along latency) breed children by crossover and mutation. Every evaluation is written
to the state file at once, and every generation's draws come from ``seed + generation``, so an
interrupted search resumes where it stopped and finds the same front.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.artifacts import atomic_write_json, read_json
from shared.errors import ConfigError
from transfer.elastic.space import ElasticSpace, SubnetArch


@dataclass(frozen=True)
class SearchSettings:
    """The search.

    Attributes:
        population: Candidates kept per generation.
        generations: Generations after the first (each breeds ``population`` children).
        mutate_prob: Probability each depth / width is re-drawn in a child.
        seed: Seed of the draws.
    """

    population: int = 12
    generations: int = 2
    mutate_prob: float = 0.15
    seed: int = 0

    def __post_init__(self):
        if self.population < 2 or self.generations < 0 or not 0 <= self.mutate_prob <= 1:
            raise ConfigError(f"search population >= 2, generations >= 0, mutate_prob in [0, 1]; got {self}")

    def budget(self) -> int:
        """Evaluations the evolutionary search makes at most."""
        return self.population * (self.generations + 1)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``(latency, accuracy)`` ``a`` is no worse than ``b`` on both and better on one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the non-dominated ``(latency, accuracy)`` points, fastest first."""
    front = [n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)]
    return sorted(front, key=lambda n: points[n])


def rank(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names by non-dominated level (front first); inside a level by latency spread (extremes first)."""
    left, order = dict(points), []
    while left:
        level = pareto_front(left)
        lat = np.array([left[n][0] for n in level])
        gaps = np.full(len(level), np.inf)
        if len(level) > 2:
            gaps[1:-1] = lat[2:] - lat[:-2]
        order += [level[i] for i in np.argsort(-gaps, kind="stable")]
        for n in level:
            del left[n]
    return order


Objectives = Callable[[SubnetArch], dict]


def near_largest(space: ElasticSpace) -> list[SubnetArch]:
    """One step down from the largest: one block fewer in one stage, or one stage's widths one choice lower.

    These lose the least accuracy, so they are where the admitted operating points are; a random
    draw over the whole space almost never lands there.
    """
    largest, out = space.largest(), []
    for s, choices in enumerate(space.depth_choices()):
        if len(choices) > 1:
            depths = list(largest.depths)
            depths[s] = choices[-2]
            out.append(space.canonical(SubnetArch(tuple(depths), largest.widths)))
    lower = space.width_choices[-2] if len(space.width_choices) > 1 else None
    for blocks in space.stage_blocks() if lower else ():
        if any(space.elastic_block(i) for i in blocks):
            widths = tuple(lower if i in blocks and space.elastic_block(i) else w for i, w in enumerate(largest.widths))
            out.append(space.canonical(SubnetArch(largest.depths, widths)))
    return out


def _seeds(space: ElasticSpace, n: int, rng: random.Random) -> list[SubnetArch]:
    """The first generation: the largest and smallest, one step down from the largest, uniform widths, random."""
    largest, smallest = space.largest(), space.smallest()
    seeds = [largest, smallest, *near_largest(space)]
    for depths in (largest.depths, smallest.depths):
        for w in space.width_choices:
            widths = tuple(w if w in space.width_options(i) else 1.0 for i in range(len(largest.widths)))
            seeds.append(space.canonical(SubnetArch(depths, widths)))
    seeds = list({a.key(): a for a in seeds}.values())[:n]
    while len(seeds) < n:
        seeds.append(space.sample(rng))
    return seeds


def _children(space: ElasticSpace, done: dict, settings: SearchSettings, gen: int) -> list[SubnetArch]:
    """Generation ``gen``'s children of the best ``population`` evaluated so far (draws from ``seed + gen``)."""
    rng = random.Random(settings.seed + gen)
    points = {k: (v["latency_ms"], v["mean_map"]) for k, v in done.items()}
    parents = [SubnetArch.from_dict(done[k]["arch"]) for k in rank(points)[: settings.population]]
    children: dict[str, SubnetArch] = {}
    for _ in range(50 * settings.population):
        if len(children) == settings.population:
            break
        a, b = rng.sample(parents, 2)
        child = space.mutate(space.crossover(a, b, rng), rng, settings.mutate_prob)
        if child.key() not in done:
            children.setdefault(child.key(), child)
    return list(children.values())


def run_search(space: ElasticSpace, objectives: Objectives, settings: SearchSettings, state_path: Path,
               signature: dict, progress: bool = True) -> dict:
    """Evaluate candidates and return the state with its ``front`` (keys, fastest first).

    Args:
        space: The choices.
        objectives: ``arch -> {"latency_ms": float, "map": {task: float}, ...}`` (extra keys are kept).
        settings: Population, generations, seed.
        state_path: The state file: read when its ``signature`` equals ``signature``, written after
            every evaluation.
        signature: What the evaluations depend on (supernet, device, images); a change starts afresh.
        progress: Show a progress bar.

    Returns:
        ``{"signature", "mode", "evaluated": {key: {...}}, "generation", "front": [keys]}``.
    """
    old = read_json(state_path) if state_path.exists() else {}
    state = old if old.get("signature") == signature else {"signature": signature, "evaluated": {}, "generation": 0}
    state["mode"] = "exhaustive" if space.size() <= settings.budget() else "evolutionary"
    done = state["evaluated"]
    bar = tqdm(total=space.size() if state["mode"] == "exhaustive" else settings.budget(), desc="search",
               disable=not progress, leave=False, initial=len(done))

    def evaluate(archs: list[SubnetArch]) -> None:
        for arch in archs:
            if arch.key() in done:
                continue
            done[arch.key()] = {"arch": arch.to_dict(), **objectives(arch)}
            done[arch.key()]["mean_map"] = float(np.mean(list(done[arch.key()]["map"].values())))
            atomic_write_json(state_path, state)
            bar.update()

    if state["mode"] == "exhaustive":
        evaluate(list(space.enumerate()))
    else:
        evaluate(_seeds(space, settings.population, random.Random(settings.seed)))
        for gen in range(1, settings.generations + 1):
            if gen <= state["generation"]:
                continue  # finished before an interruption
            if (state.get("plan") or {}).get("generation") != gen:  # the children are drawn once, then kept
                drawn = _children(space, done, settings, gen)
                state["plan"] = {"generation": gen, "archs": [a.to_dict() for a in drawn]}
                atomic_write_json(state_path, state)
            evaluate([SubnetArch.from_dict(a) for a in state["plan"]["archs"]])
            state["generation"] = gen
            atomic_write_json(state_path, state)
    bar.close()
    state["front"] = pareto_front({k: (v["latency_ms"], v["mean_map"]) for k, v in done.items()})
    atomic_write_json(state_path, state)
    return state


def choose(state: dict, keep: int, budgets_ms: tuple[float, ...] = (), max_drop_points: float | None = None,
           reference_map: float | None = None) -> list[str]:
    """The front's sub-networks to publish: one per budget, then up to ``keep`` spread along latency.

    Front points within ``max_drop_points`` of ``reference_map`` (mean mAP, search protocol) come
    first; the rest fill what is left of ``keep``.

    Raises:
        ConfigError: If a budget is under the fastest evaluated sub-network's latency (naming it).
    """
    done, front = state["evaluated"], state["front"]
    chosen: list[str] = []
    for budget in budgets_ms:
        fits = [k for k in front if done[k]["latency_ms"] <= budget]
        if not fits:
            fastest = min(v["latency_ms"] for v in done.values())
            raise ConfigError(f"no sub-network meets a {budget:g} ms budget; the fastest evaluated one takes "
                              f"{fastest:.2f} ms: raise --budget-ms to at least that")
        chosen.append(max(fits, key=lambda k: done[k]["mean_map"]))
    near = [k for k in front if max_drop_points is None or reference_map is None
            or 100 * (reference_map - done[k]["mean_map"]) <= max_drop_points]
    for group in (near, [k for k in front if k not in near]):
        room = keep - len(chosen)
        if room <= 0:
            break
        rest = [k for k in group if k not in chosen]
        picks = np.unique(np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int)) if rest else []
        chosen += [rest[i] for i in picks]
    return list(dict.fromkeys(chosen))


def settings_dict(settings: SearchSettings) -> dict:  # noqa: D103
    return asdict(settings)
