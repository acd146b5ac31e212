"""Step 1 of the tutorial: the hook and the data owners (syft VirtualWorkers).

syft keeps every worker in a process-wide registry (the local worker's ``_known_workers``).
Creating a worker whose id is already registered silently copies the *old* worker's objects, and
``add_workers`` on a known id logs "Worker X already exists. Replacing old worker...". So workers
are created with ``auto_add=False``, introduced to each other explicitly (the seed's
``add_workers`` step, which real socket workers need), and always removed again afterwards.
"""

from contextlib import contextmanager
from typing import Iterator, List, Sequence

from syft.workers.virtual import VirtualWorker

from .errors import ConfigError
from .pairwise_owner import PairwiseOwner


class OwnerWorker(PairwiseOwner, VirtualWorker):
    """An in-process data owner: syft's VirtualWorker plus the owner's side of pairwise masking."""


def create_hook():
    """Return syft's TorchHook, hooking torch on the first call only (hooking twice is refused).

    Also makes syft draw share masks from a cryptographic generator (:mod:`fl_smpc.share_masks`):
    every process -- model owner or ``fl-smpc worker`` -- hooks torch through here.
    """
    import syft as sy
    import torch

    from .share_masks import install_csprng_shares

    install_csprng_shares()
    if getattr(sy, "hook", None) is not None and getattr(torch, "torch_hooked", False):
        return sy.hook
    return sy.TorchHook(torch)


def create_workers(hook, names: Sequence[str]) -> List:
    """Create one :class:`OwnerWorker` per name and make all of them (and the model owner) know each other."""
    taken = [n for n in names if n in hook.local_worker._known_workers]
    if taken:
        raise ConfigError(f"workers {taken} already exist in this process; call remove_workers() first")
    workers = [OwnerWorker(hook, id=name, auto_add=False) for name in names]
    introduce(hook.local_worker, workers)
    return workers


def introduce(local_worker, workers: Sequence) -> None:
    """The seed's ``bob.add_workers([alice, jane])`` step, for every owner and the model owner.

    Only ids a worker does not know yet are added, so syft logs no "already exists" warning.
    """
    everyone = [local_worker, *workers]
    for worker in everyone:
        unknown = [w for w in everyone if w.id not in worker._known_workers]
        worker.add_workers(unknown)


def remove_workers(hook, workers: Sequence) -> None:
    """Delete the workers' objects and forget them everywhere, so the ids can be reused cleanly."""
    ids = {w.id for w in workers}
    for worker in workers:
        worker.clear_objects()
    for known in [hook.local_worker, *workers]:
        for worker_id in ids & set(known._known_workers):
            known.remove_worker_from_registry(worker_id)
    hook._syft_workers.difference_update(workers)


@contextmanager
def virtual_workers(names: Sequence[str], hook=None) -> Iterator[List]:
    """``with virtual_workers(["bob", "alice"]) as (bob, alice): ...`` -- workers removed on exit."""
    hook = hook or create_hook()
    workers = create_workers(hook, names)
    try:
        yield workers
    finally:
        remove_workers(hook, workers)


class _IdsDrawnInBlock:
    """Stands in for ``ID_PROVIDER.generated`` inside a block: the same set, plus a list of additions.

    Recording the additions keeps the clean-up proportional to the round's ids, not to every id the
    process ever drew (copying a 200,000-id set costs ~60 ms).
    """

    def __init__(self, ids):
        self.ids, self.added = ids, []

    def add(self, id_):
        self.ids.add(id_)
        self.added.append(id_)

    def __contains__(self, id_):
        return id_ in self.ids

    def __len__(self):
        return len(self.ids)

    def __getattr__(self, name):  # intersection() etc. act on the real set
        return getattr(self.ids, name)


@contextmanager
def forget_transient_ids(workers: Sequence) -> Iterator[None]:
    """Let syft forget the object ids drawn inside the block, except those still stored.

    syft's ``ID_PROVIDER`` remembers every id it ever drew (~700 per toy round) so that it never
    draws one twice; over 500 rounds that set alone grows RSS by ~25 MB. Ids matter where objects
    are looked up by id -- the object stores -- so ids still held there (here or on ``workers``)
    stay reserved; ids of the round's freed pointers, shares and model copies are released.
    """
    import syft as sy

    provider = sy.ID_PROVIDER
    ids = provider.generated
    provider.generated = recorder = _IdsDrawnInBlock(ids)
    try:
        yield
    finally:
        provider.generated = ids
        # object_store._objects, not _objects: only VirtualWorker has that shortcut (socket clients do not)
        stores = [w.object_store._objects for w in (sy.local_worker, *workers)]
        ids.difference_update([i for i in recorder.added if not any(i in store for store in stores)])
