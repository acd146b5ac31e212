"""The SHA-256 that ties the exported SMS split to the Opacus run: one definition for both venvs (numpy only).

export_sms.py (the project's Python 3.8 venv) records it; opacus_sms.py (its own Python 3.11 venv) checks it.
"""

import hashlib

import numpy as np

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def fingerprint(arrays) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()
