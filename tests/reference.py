"""The plain-PyTorch FedAvg reference now lives in the package (fl_smpc.reference); tests import it from here."""
from fl_smpc.reference import (ReferenceRound, fedavg_rounds, local_train, pooled_loss, seed_model,  # noqa: F401
                               sse)
