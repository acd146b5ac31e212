"""A trained global model on disk (``--save-model PATH``) and its use on new messages (``fl-smpc classify``).

The file is one ``torch.save`` of a dict, so ``torch.load(PATH)["state_dict"]`` is a plain state dict::

    {"format": "fl-smpc-model/1",
     "state_dict": {"weight": (out, in) tensor, "bias": (out,) tensor},   # the final global model
     "model": {"class": "torch.nn.Linear", "in_features": in, "out_features": out},
     "dataset": "toy" | "sms", "features": hashed features (sms) or None, "loss": "sse" | "bce",
     "threshold": output above which a message is spam, "rounds": completed rounds, "config": FLConfig fields}

``load_model`` rebuilds the ``nn.Linear`` from ``model`` and checks every field. ``torch.load`` unpickles:
load only model files you (or someone you trust) wrote.
"""

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import ModelFileError

FORMAT = "fl-smpc-model/1"
LINEAR = "torch.nn.Linear"


@dataclass
class SavedModel:
    """A loaded model file: the rebuilt module and the settings it was trained with."""

    model: object  # torch.nn.Linear, in eval mode
    info: dict  # the file's fields other than the state dict

    def classify(self, messages: Sequence[str]) -> List[str]:
        """``"spam"`` or ``"ham"`` per message: hashed like the owners' messages, then the decision threshold."""
        import torch

        from .sms.corpus import featurize

        if self.info["dataset"] != "sms":
            raise ModelFileError(
                f"this model was trained on the {self.info['dataset']!r} data ({self.info['model']['in_features']} "
                "numeric features), not on messages: train one with --dataset sms --save-model PATH"
            )
        if not messages:
            return []
        with torch.no_grad():
            scores = self.model(featurize(list(messages), self.info["features"])).view(-1)  # type: ignore[operator]
        return ["spam" if s > self.info["threshold"] else "ham" for s in scores.tolist()]


def save_model(path, history, spec) -> Path:
    """Write ``history``'s final global model and the settings that rebuild it, atomically; return the path."""
    import torch

    from .sms.experiment import LOSSES

    state = {name: t.detach().clone() for name, t in history.latest_state().items()}
    out_features, in_features = state["weight"].shape
    doc = {
        "format": FORMAT,
        "state_dict": state,
        "model": {"class": LINEAR, "in_features": int(in_features), "out_features": int(out_features)},
        "dataset": spec.dataset,
        "features": spec.features if spec.dataset == "sms" else None,
        "loss": spec.loss,
        "threshold": LOSSES[spec.loss][1],
        "rounds": len(history.rounds),
        "config": {**asdict(history.config), "workers": list(history.config.workers)},
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".tmp", dir=str(path.parent.resolve()))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(doc, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load_model(path) -> SavedModel:
    """Read a ``--save-model`` file and rebuild its ``nn.Linear``; ModelFileError names what is wrong."""
    import torch
    from torch import nn

    try:
        doc = torch.load(str(path), map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except Exception as err:  # unpickling errors of every kind: not a torch file, truncated...
        raise ModelFileError(f"{path}: cannot read a saved model: {type(err).__name__}: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an fl-smpc model file (expected format {FORMAT!r}, from --save-model)")
    spec = doc.get("model")
    state = doc.get("state_dict")
    sizes = _sizes(spec)
    if sizes is None or not isinstance(state, dict):
        raise ModelFileError(f"{path}: malformed model file: 'model' must name {LINEAR} with its sizes")
    model = nn.Linear(*sizes)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ModelFileError(f"{path}: the state dict does not fit {LINEAR}{sizes}: {_last_line(err)}") from None
    threshold, features = doc.get("threshold"), doc.get("features")
    if doc.get("dataset") not in ("toy", "sms") or not isinstance(threshold, (int, float)):
        raise ModelFileError(f"{path}: malformed model file: 'dataset' and 'threshold' are required")
    if doc["dataset"] == "sms" and features != sizes[0]:
        raise ModelFileError(f"{path}: malformed model file: 'features' {features!r}, the model has {sizes[0]}")
    return SavedModel(model.eval(), {k: v for k, v in doc.items() if k != "state_dict"})


def _sizes(spec) -> Optional[tuple]:
    if not isinstance(spec, dict) or spec.get("class") != LINEAR:
        return None
    sizes = (spec.get("in_features"), spec.get("out_features"))
    ok = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    return sizes if ok else None


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
