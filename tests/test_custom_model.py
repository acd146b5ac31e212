"""Your own model, loss and data through train_federated, against plain-PyTorch FedAvg (fl_smpc.reference).

A ReLU network is not contractive, so tiny quantisation differences can grow over many rounds; the
tight check is therefore per round: each secure round is replayed in plaintext from the secure run's
own previous model, and must agree to within the one quantum a secure average may be off by.
"""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl_smpc import FLConfig, FlSmpcError, check_dataset, run_rounds, split_dataset, train_federated
from fl_smpc.reference import fedavg_rounds, local_train, max_differences, plaintext_fedavg, pooled_loss
from fl_smpc.training import batch_slices

WORKERS = ("a", "b", "c")


def mlp(seed=0, inputs=4, outputs=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 8), nn.ReLU(), nn.Linear(8, outputs))


def regression_data(rows=11, inputs=4, outputs=2):
    """Real-valued targets, far from 0/1; 11 rows over 3 owners = 4, 4, 3 (unequal, so weighting matters)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, inputs, generator=g), 3 * torch.randn(rows, outputs, generator=g) + 5


def flat(state):
    return torch.cat([t.flatten() for t in state.values()])


def assert_each_round_is_plaintext_fedavg(history, make_model, parts, config, loss_fn):
    """Replay every round in plain PyTorch from the secure run's previous model: parameters within one
    quantum, the same local losses, and the global loss equal to the loss on the pooled data."""
    quantum = 10.0 ** -config.precision_fractional
    start = make_model()
    start.load_state_dict(history.initial_model)
    assert history.initial_loss == pytest.approx(pooled_loss(start, parts, loss_fn), rel=1e-5)
    previous = history.initial_model
    for r in history.rounds:
        model = make_model()
        model.load_state_dict(previous)
        (reference,) = fedavg_rounds(model, parts, 1, config.lr, config.local_steps, loss_fn, config.batch_size,
                                     rounds_done=r.round - 1)
        assert (flat(r.model) - reference.params).abs().max().item() <= quantum + 1e-6, f"round {r.round}"
        assert list(r.worker_losses.values()) == pytest.approx(reference.worker_losses, rel=1e-5)
        model.load_state_dict(r.model)
        assert r.global_loss == pytest.approx(pooled_loss(model, parts, loss_fn), rel=1e-5), f"round {r.round}"
        previous = r.model


@pytest.mark.parametrize("batch_size, local_steps", [(None, 2), (2, 3), (3, 1)])
def test_mlp_mean_mse_regression_matches_plaintext_fedavg(batch_size, local_steps):
    """Mini-batches of 2 over partitions of 4, 4 and 3 rows with 3 steps a round wrap around inside a round and
    continue across rounds; replaying a round from batch 0 (or on the whole partition) would not match."""
    data, target = regression_data()
    config = FLConfig(workers=WORKERS, rounds=4, local_steps=local_steps, lr=0.05, batch_size=batch_size,
                      loss_reduction="mean", precision_fractional=5, seed=0)
    history = train_federated(config, data, target, model=mlp(), loss_fn=F.mse_loss)
    parts = split_dataset(data, target, len(WORKERS), binary_labels=False)
    assert_each_round_is_plaintext_fedavg(history, mlp, parts, config, F.mse_loss)
    assert history.rounds[-1].global_loss < history.initial_loss


def test_batches_continue_across_rounds():
    """The batch schedule itself: rows 0-1, 2-3, 4 (short), then round 2 continues at 0-1."""
    assert batch_slices(5, 2, 0, 3) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert batch_slices(5, 2, 3, 2) == [slice(0, 2), slice(2, 4)]
    assert batch_slices(5, None, 7, 2) == batch_slices(5, 5, 7, 2) == [None, None]


def test_whole_run_tracks_plaintext_fedavg():
    """Round after round on the same batches: a small lr keeps the MLP's steps from amplifying the quanta."""
    data, target = regression_data()
    config = FLConfig(workers=WORKERS, rounds=3, local_steps=2, lr=0.01, batch_size=2, loss_reduction="mean",
                      precision_fractional=4, seed=0)
    reference_model = mlp()
    history = train_federated(config, data, target, model=mlp(), loss_fn=F.mse_loss)
    parts = split_dataset(data, target, len(WORKERS), binary_labels=False)
    reference = fedavg_rounds(reference_model, parts, config.rounds, config.lr, config.local_steps, F.mse_loss,
                              config.batch_size)
    quantum = 10.0 ** -config.precision_fractional
    for r, ref in zip(history.rounds, reference):
        assert (flat(r.model) - ref.params).abs().max().item() <= 1.5 * r.round * quantum
        assert r.global_loss == pytest.approx(ref.global_loss, rel=1e-3)


@pytest.mark.parametrize("reduction, loss_fn", [
    ("mean", F.mse_loss),
    ("sum", functools.partial(F.mse_loss, reduction="sum")),
    ("mean", nn.MSELoss()),
])
def test_global_loss_is_the_pooled_loss(reduction, loss_fn):
    """With a mean loss the owners' means are weighted by their row counts (4, 4, 3): the pooled mean, not
    their sum or plain average. The loss may be a function, a partial (taken before syft's hook), or a module."""
    data, target = regression_data()
    config = FLConfig(workers=WORKERS, rounds=2, lr=0.01, loss_reduction=reduction, seed=0)
    history = train_federated(config, data, target, model=mlp(), loss_fn=loss_fn)
    parts = split_dataset(data, target, len(WORKERS), binary_labels=False)
    model = mlp()
    for state, loss in [(history.initial_model, history.initial_loss), (history.rounds[-1].model,
                                                                        history.rounds[-1].global_loss)]:
        model.load_state_dict(state)
        assert loss == pytest.approx(pooled_loss(model, parts, loss_fn), rel=1e-5)
        per_owner = [pooled_loss(model, [p], loss_fn) for p in parts]
        if reduction == "mean":  # the two wrong combinations are clearly different here
            assert abs(loss - sum(per_owner)) > 0.5 * loss and abs(loss - sum(per_owner) / 3) > 1e-3 * loss


def test_default_sum_loss_and_linear_model_unchanged_on_regression_targets():
    """The package's own model and summed squared error accept real-valued (rows, k) targets too."""
    data, target = regression_data(outputs=3)
    config = FLConfig(workers=WORKERS, rounds=3, lr=0.01, seed=4)
    history = train_federated(config, data, target)
    assert history.initial_model["weight"].shape == (3, 4)
    parts = split_dataset(data, target, len(WORKERS), binary_labels=False)
    assert_each_round_is_plaintext_fedavg(history, lambda: nn.Linear(4, 3), parts, config,
                                          lambda p, t: ((p - t) ** 2).sum())


def test_given_model_leaves_the_global_generator_alone():
    data, target = regression_data()
    config = FLConfig(workers=WORKERS, rounds=2, lr=0.01, batch_size=3, loss_reduction="mean", seed=9)
    model = mlp()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    train_federated(config, data, target, model=model, loss_fn=F.mse_loss)
    after = torch.rand(3)
    torch.set_rng_state(state)
    assert torch.equal(after, torch.rand(3))


def test_package_model_is_seeded_from_the_config():
    """Only a model the package builds reseeds torch (from config.seed), so equal seeds give equal runs."""
    data, target = regression_data()
    torch.manual_seed(1)
    first = train_federated(FLConfig(workers=WORKERS, rounds=1, lr=0.01, seed=5), data, target)
    torch.manual_seed(2)
    second = train_federated(FLConfig(workers=WORKERS, rounds=1, lr=0.01, seed=5), data, target)
    assert torch.equal(flat(first.rounds[-1].model), flat(second.rounds[-1].model))


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 1)),
     r"model does not accept data rows of shape \(4,\): its forward on an input of shape \(1, 4\) fails with: "
     r"size mismatch, m1: \[1 x 4\], m2: \[13 x 32\]"),
    (nn.Sequential(nn.Linear(4, 3)),
     r"loss_fn cannot compare the model's output of shape \(1, 3\) with a target of shape \(1, 2\)"),
])
def test_model_that_does_not_fit_the_data_is_refused_in_one_line(model, message):
    data, target = regression_data()
    with pytest.raises(ValueError, match=message) as err:
        train_federated(FLConfig(workers=WORKERS, seed=0, loss_reduction="mean"), data, target, model=model,
                        loss_fn=F.mse_loss)
    assert "\n" not in str(err.value)


def test_broadcasting_loss_is_refused():
    """mse_loss of a (rows, 1) output against (rows,) targets broadcasts to (rows, rows) with only a warning."""
    data, target = regression_data(outputs=1)
    with pytest.raises(ValueError, match=r"output of shape \(1, 1\) with a target of shape \(1,\)"):
        train_federated(FLConfig(workers=WORKERS, seed=0, loss_reduction="mean"), data, target.view(-1),
                        model=mlp(outputs=1), loss_fn=F.mse_loss)


def test_loss_module_reduction_must_match_the_config():
    data, target = regression_data()
    with pytest.raises(ValueError, match=r"loss_fn reduces by 'mean' but config.loss_reduction is 'sum'"):
        train_federated(FLConfig(workers=WORKERS, seed=0), data, target, model=mlp(), loss_fn=nn.MSELoss())


@pytest.mark.parametrize("change, message", [
    (lambda d, t: (d[:, 0], t), r"data: expected a non-empty tensor \(rows, features, ...\), got shape \(11,\)"),
    (lambda d, t: (d, t[:10]), r"target: expected 11 rows, shape \(11,\) or \(11, k\), to match the data, got"),
    (lambda d, t: (d, t.index_fill(0, torch.tensor([2]), float("nan"))), "target: contains NaN or Inf"),
    (lambda d, t: (d.index_fill(0, torch.tensor([2]), float("inf")), t), "data: contains NaN or Inf"),
])
def test_check_dataset_names_the_problem(change, message):
    data, target = change(*regression_data())
    with pytest.raises(ValueError, match=message):
        check_dataset(data, target, binary_labels=False)
    with pytest.raises(ValueError, match=message):
        train_federated(FLConfig(workers=WORKERS, seed=0), data, target, model=mlp())


def test_regression_targets_only_refused_where_labels_are_binary():
    data, target = regression_data(outputs=1)
    check_dataset(data, target, binary_labels=False)
    with pytest.raises(ValueError, match="target: labels must be 0 or 1"):
        check_dataset(data, target)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size: must be a positive integer or None"),
    (dict(batch_size=2.0), "batch_size: must be a positive integer or None"),
    (dict(loss_reduction="none"), "loss_reduction: must be one of sum, mean"),
])
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FLConfig(**kwargs)


def test_run_rounds_with_evaluate_and_on_round(make_workers):
    """The lower-level loop over workers you connected yourself; evaluate's metrics land in every round."""
    from fl_smpc import send_partitions

    data, target = regression_data()
    x_test, y_test = data[:3] + 0.1, target[:3]
    config = FLConfig(workers=("w0", "w1", "w2"), rounds=2, lr=0.01, batch_size=2, loss_reduction="mean", seed=0)
    seen = []
    workers = make_workers(3)
    remote_data = send_partitions(split_dataset(data, target, 3, binary_labels=False), workers)
    model = mlp()
    history = run_rounds(model, workers, remote_data, config, F.mse_loss,
                         evaluate=lambda m: {"test_mse": F.mse_loss(m(x_test), y_test).item()},
                         on_round=lambda result, h: seen.append(result.round))
    assert seen == [1, 2] and set(history.initial_metrics) == {"test_mse"}
    reference = mlp()
    reference.load_state_dict(history.rounds[-1].model)
    assert history.rounds[-1].metrics["test_mse"] == pytest.approx(F.mse_loss(reference(x_test), y_test).item())


def test_reference_local_train_uses_the_same_batches_as_the_schedule():
    """The reference cuts batches with torch.split; the package with batch_slices: same rows per step."""
    data, target = regression_data(rows=7)
    model = nn.Linear(4, 2)
    expected = copy.deepcopy(model)
    local_train(model, data, target, 0.1, 5, F.mse_loss, batch_size=3, first_step=2)
    opt = torch.optim.SGD(expected.parameters(), lr=0.1)
    for rows in batch_slices(7, 3, 2, 5):
        opt.zero_grad()
        F.mse_loss(expected(data[rows]), target[rows]).backward()
        opt.step()
    assert torch.equal(flat(model.state_dict()), flat(expected.state_dict()))


def test_plaintext_fedavg_takes_what_train_federated_takes():
    """One call each, the same arguments: the caller's model is left alone, the History has the same shape, and
    every round agrees to within a few quanta (weights 4, 4, 3; owners per round drawn alike)."""
    data, target = regression_data()
    config = FLConfig(workers=("a", "b", "c", "d"), rounds=3, local_steps=2, lr=0.01, batch_size=2,
                      loss_reduction="mean", precision_fractional=4, seed=0, owners_per_round=3)
    model = mlp()
    start = copy.deepcopy(model.state_dict())
    evaluate = lambda m: {"mse": F.mse_loss(m(data), target).item()}  # noqa: E731
    plain = plaintext_fedavg(config, data, target, model=model, loss_fn=F.mse_loss, evaluate=evaluate)
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    secure = train_federated(config, data, target, model=model, loss_fn=F.mse_loss, evaluate=evaluate)
    assert type(plain) is type(secure) and plain.config == secure.config
    assert [r.contributors for r in plain.rounds] == [r.contributors for r in secure.rounds]
    assert [set(r.worker_losses) for r in plain.rounds] == [set(r.worker_losses) for r in secure.rounds]
    assert all(torch.equal(plain.initial_model[k], secure.initial_model[k]) for k in start)
    assert plain.initial_loss == pytest.approx(secure.initial_loss, rel=1e-6)
    assert plain.initial_metrics == pytest.approx(secure.initial_metrics, rel=1e-6)
    gaps = max_differences(secure, plain)
    assert len(gaps) == 3 and max(gaps) <= 3 * 10.0 ** -config.precision_fractional
    for s, p in zip(secure.rounds, plain.rounds):
        assert s.global_loss == pytest.approx(p.global_loss, rel=1e-3)
        assert s.metrics["mse"] == pytest.approx(p.metrics["mse"], rel=1e-3)


def test_plaintext_fedavg_on_the_toy_default_matches_the_readme():
    """No data, no model: the toy data and the seeded nn.Linear(3, 1), as train_federated builds them."""
    plain = plaintext_fedavg(FLConfig(seed=0))
    assert round(plain.initial_loss, 4) == 6.7036
    assert [round(r.global_loss, 4) for r in plain.rounds] == [1.38, 0.99, 0.8615, 0.7725, 0.7008]


def test_plaintext_fedavg_names_the_low_level_form():
    data, target = regression_data()
    with pytest.raises(TypeError, match="fedavg_rounds"):
        plaintext_fedavg(mlp(), split_dataset(data, target, 3, binary_labels=False), 1)


def test_a_flat_target_for_a_column_output_is_refused_with_the_fix():
    """Boston's natural (506,) prices against nn.Linear(..., 1)'s (rows, 1) output: one line that says what to do."""
    data, target = regression_data(outputs=1)
    with pytest.raises(ValueError, match=r"give the target as target.view\(-1, 1\)") as refused:
        train_federated(FLConfig(workers=WORKERS, rounds=1, loss_reduction="mean", seed=0), data, target.view(-1),
                        model=mlp(outputs=1), loss_fn=F.mse_loss)
    assert isinstance(refused.value, FlSmpcError) and "\n" not in str(refused.value)
