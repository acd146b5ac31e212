"""Step 3: local training on one data owner, driven through pointers (data never moves)."""
from torch import optim


def sum_squared_error(prediction, target):
    """The seed's loss: a *sum* of squared errors (the seed's prose calls it a mean; it is not)."""
    return ((prediction - target) ** 2).sum()


def train_locally(remote_model, data_ptr, target_ptr, lr: float, steps: int, loss_fn=sum_squared_error) -> float:
    """Run ``steps`` SGD steps of ``remote_model`` on the owner's data; return the last step's loss.

    As in the seed, the loss reported is the one computed before the final ``step()``.
    Only that scalar is fetched: the model and the data stay on the worker.
    """
    optimizer = optim.SGD(params=remote_model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(remote_model(data_ptr), target_ptr)
        loss.backward()
        optimizer.step()
    return loss.get().item()


def remote_loss(remote_model, data_ptr, target_ptr, loss_fn=sum_squared_error) -> float:
    """The loss of ``remote_model`` on one owner's data, computed on the worker; only the scalar returns."""
    return loss_fn(remote_model(data_ptr), target_ptr).get().item()
