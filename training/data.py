"""In-memory datasets of item dicts, and seeded splitting of item lists."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """Items ``{key: arrays[key][i]}`` as tensors, from equally long arrays.

    Parameters
    ----------
    arrays
        Name -> array (or tensor) with the items on axis 0.
    """

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        if not arrays:
            raise ValueError("`arrays` must hold at least one array, an empty mapping is given.")
        self.tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self.tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"`arrays` must be equally long, lengths {lengths} are given.")
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}


class ListDataset(Dataset):
    """Items from a list of records, each turned into an item dict by ``transform`` on access."""

    def __init__(self, records: Sequence[Any], transform) -> None:
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.transform(self.records[index])


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Disjoint seeded random index sets of ``n`` items with the given fractions (summing to 1)."""
    if n < len(fractions):
        raise ValueError(f"`n` must be at least {len(fractions)} to split, {n} is given.")
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f <= 0 for f in fractions):
        raise ValueError(f"`fractions` must be positive and sum to 1, {list(fractions)} is given.")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(part) for part in np.split(order, cuts)]


class LazySplits(Mapping):
    """``{split: Dataset}`` whose datasets are built on first access (then kept).

    Lets ``medgate evaluate`` generate only the split it measures.
    """

    def __init__(self, builders: Mapping[str, Callable[[], Dataset]]) -> None:
        self._builders, self._built = dict(builders), {}

    def __getitem__(self, split: str) -> Dataset:
        if split not in self._built:
            self._built[split] = self._builders[split]()
        return self._built[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def _single_threaded(job: tuple[Callable[[Any], Any], Any]) -> Any:
    function, args = job
    torch.set_num_threads(1)  # one generator process per core
    return function(args)


def map_shards(function: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1) -> list[Any]:
    """``[function(job) for job in jobs]``, in forked processes (one torch thread each) when
    ``workers`` > 1; ``function`` must be a module-level function."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_single_threaded, [(function, job) for job in jobs]))
    return [function(job) for job in jobs]
