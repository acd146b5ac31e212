"""Issue 6: a round frees what it creates -- object stores and syft's id registry stay flat."""
import syft as sy
import torch
from torch import nn

from fl_smpc import FLConfig
from fl_smpc.data import send_partitions, split_dataset, toy_dataset
from fl_smpc.federated import run_rounds
from fl_smpc.secure_aggregation import secure_average, secure_average_per_tensor
from fl_smpc.workers import virtual_workers


def test_object_stores_stay_constant_over_30_rounds(hook):
    config = FLConfig(workers=("mem_bob", "mem_alice", "mem_jane"), rounds=30, seed=0)
    torch.manual_seed(config.seed)
    data, target = toy_dataset()
    sizes, ids = [], []
    with virtual_workers(config.workers, hook) as workers:
        remote_data = send_partitions(split_dataset(data, target, len(workers)), workers)

        def record(result, history):
            sizes.append([len(sy.local_worker._objects)] + [len(w._objects) for w in workers])
            ids.append(len(sy.ID_PROVIDER.generated))

        history = run_rounds(nn.Linear(3, 1), workers, remote_data, config, on_round=record)
    assert len(history.rounds) == 30
    # each owner keeps exactly its data and target; nothing accumulates here or there
    assert sizes == [[0, 2, 2, 2]] * 30
    # syft remembers every id it drew (~700 per round before the fix); only ids of objects that
    # outlive the round stay reserved: the 2 tensors of each round's snapshot in the history
    assert ids[-1] - ids[0] <= 2 * 29, ids


def test_both_sharing_layouts_free_their_shares(hook):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)) for _ in range(3)]
    with virtual_workers(["mem0", "mem1", "mem2"], hook) as workers:
        remote = [m.copy().send(w) for m, w in zip(models, workers)]
        before = [len(w._objects) for w in workers]
        for _ in range(3):
            secure_average(remote, workers)
            secure_average_per_tensor(remote, workers)
        assert [len(w._objects) for w in workers] == before == [4, 4, 4]


def test_forget_transient_ids_keeps_stored_ids_and_needs_only_an_object_store(hook):
    """Any syft worker works (socket clients have ``object_store`` but no ``_objects`` shortcut)."""
    from types import SimpleNamespace

    from fl_smpc.workers import forget_transient_ids

    store = {}
    client_like = SimpleNamespace(object_store=SimpleNamespace(_objects=store))
    before = set(sy.ID_PROVIDER.generated)
    with forget_transient_ids([client_like]):
        transient = [sy.ID_PROVIDER.pop() for _ in range(5)]
        with forget_transient_ids([]):  # nested blocks (e.g. a round inside a caller's block) compose
            transient.append(sy.ID_PROVIDER.pop())
        kept = sy.ID_PROVIDER.pop()
        store[kept] = "still stored after the round"
    assert isinstance(sy.ID_PROVIDER.generated, set)
    assert sy.ID_PROVIDER.generated == before | {kept}
    assert not set(transient) & sy.ID_PROVIDER.generated
