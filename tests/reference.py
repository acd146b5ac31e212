"""Plain-PyTorch FedAvg, no syft: the reference the secure implementation is checked against."""
import copy

import torch
from torch import nn, optim
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def sse(prediction, target):
    return ((prediction - target) ** 2).sum()


def local_train(model, data, target, lr, steps):
    """Same steps as the seed: zero_grad, forward, summed squared error, backward, SGD step."""
    opt = optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = sse(model(data), target)
        loss.backward()
        opt.step()
    return loss.item()


def plaintext_fedavg(model, parts, rounds, lr, steps):
    """Return [(worker_losses, global_loss, flat_params)] per round; ``model`` is updated in place."""
    data = torch.cat([x for x, _ in parts])
    target = torch.cat([y for _, y in parts])
    history = []
    for _ in range(rounds):
        local = [copy.deepcopy(model) for _ in parts]
        losses = [local_train(m, x, y, lr, steps) for m, (x, y) in zip(local, parts)]
        mean = torch.stack([parameters_to_vector(m.parameters()) for m in local]).mean(0)
        with torch.no_grad():
            vector_to_parameters(mean, model.parameters())
            history.append((losses, sse(model(data), target).item(), mean.detach().clone()))
    return history


def seed_model(seed, in_features=3):
    torch.manual_seed(seed)
    return nn.Linear(in_features, 1)
