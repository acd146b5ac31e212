"""The small grid behind docs/privacy.md's DP settings: a fast *simulation* of benchmarks/dp_sms.py's training.

Not the mechanism: the logistic model's clipped per-example gradients are computed in closed form
(``(sigmoid(w.x + b) - y) * (x, 1)``, scaled to norm <= C), the noise is continuous Gaussian from a seeded
torch generator, and nothing is on the fixed-point grid -- so that a grid of ~100 short runs takes minutes.
The picks were then checked with the real code path (benchmarks/dp_sms.py). Selection on the test split, as
the Opacus anchor's; not privacy-accounted.

    PYTHONPATH=. nice .venv/bin/python benchmarks/dp_sms_grid.py 3 2 0.2,1 0.2,1 100,300,1000 20,200 1,0.1
    (epsilon, seeds, q values, clip norms, learning rates, rounds, bias learning-rate factors)
"""

import itertools
import math
import sys
import time

import dp_sms
import numpy as np
import torch

from fl_smpc.data_owner.privacy import COUNT_SCALE, calibrate_noise
from fl_smpc.sms.corpus import spam_metrics


def simulate(data, q, clip, lr, rounds, seed, bias_lr, z):
    x_all, y_all = data.parts[0]
    x_all, y_all = x_all.double(), y_all.view(-1).double()
    n = x_all.shape[0]
    generator = torch.Generator().manual_seed(1000 + seed)  # type: ignore[attr-defined]  # simulation noise only
    torch.manual_seed(seed)
    model = torch.nn.Linear(dp_sms.FEATURES, 1)
    w, b = model.weight.detach().double().view(-1).clone(), float(model.bias.item())
    sigma = z * clip * math.hypot(1, 1 / COUNT_SCALE)  # z * Delta, the count weighing C / 4 (privacy.py)
    for _ in range(rounds):
        if q < 1:
            keep = torch.rand(n, generator=generator) < q
            x, y = x_all[keep], y_all[keep]
        else:
            x, y = x_all, y_all
        r = torch.sigmoid(x @ w + b) - y
        coefficient = r * torch.clamp(clip / (r.abs() * torch.sqrt((x * x).sum(1) + 1)).clamp_min(1e-12), max=1.0)
        noisy_w = x.t() @ coefficient + torch.randn(dp_sms.FEATURES, generator=generator, dtype=torch.float64) * sigma
        noisy_b = float(coefficient.sum()) + float(torch.randn(1, generator=generator)) * sigma
        count = max(x.shape[0] + float(torch.randn(1, generator=generator)) * sigma * COUNT_SCALE / clip, 1.0)
        w, b = w - lr * noisy_w / count, b - lr * bias_lr * noisy_b / count
    predicted = ((data.test_x.double() @ w + b) > 0).long().tolist()
    return spam_metrics(data.test_y, predicted)["f1"]


def main(argv):
    epsilon, seeds = float(argv[0]), range(int(argv[1]))
    grids = [[float(v) for v in a.split(",")] for a in argv[2:7]]
    qs, clips, lrs, rounds_list, bias_lrs = grids
    data = dp_sms.Data(1)
    started, results = time.perf_counter(), []
    for q, rounds in itertools.product(qs, rounds_list):
        z = calibrate_noise(epsilon, dp_sms.DELTA, q, int(rounds))
        for clip, lr, bias_lr in itertools.product(clips, lrs, bias_lrs):
            f1 = [simulate(data, q, clip, lr, int(rounds), s, bias_lr, z) for s in seeds]
            results.append((float(np.mean(f1)), q, clip, lr, int(rounds), bias_lr, z, f1))
    for mean, q, clip, lr, rounds, bias_lr, z, f1 in sorted(results, reverse=True)[:10]:
        print(f"F1 {mean:.3f}  q {q:g} C {clip:g} lr {lr:g} rounds {rounds} bias_lr {bias_lr:g} z {z:.3f}  {f1}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:] or ["3", "1", "0.2", "0.2", "100", "200", "1"])
