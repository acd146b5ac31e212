"""The plain-PyTorch FedAvg reference now lives in the package (fl_smpc.reference); tests import it from here."""
from fl_smpc.reference import (ReferenceRound, local_train, plaintext_fedavg, pooled_loss, seed_model,  # noqa: F401
                               sse)
