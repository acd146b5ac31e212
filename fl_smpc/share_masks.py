"""Share masks from a cryptographic generator for syft 0.2.9's additive sharing.

syft's ``AdditiveSharingTensor.generate_shares`` draws its masks with ``random_`` on torch's global
generator, a Mersenne Twister. Each int64 mask is two raw 32-bit outputs of it, so a worker holding
312 values of one share it received can rebuild the generator's state and compute every mask drawn
after them -- the other masks of that owner and of anyone else sharing from the same generator --
and seeding torch for a reproducible run fixes every mask in advance.

:func:`install_csprng_shares` replaces that one method (``fl_smpc.workers.create_hook`` calls it, so
every process that hooks torch through this package shares this way). Masks are AES-256-CTR
keystream under a key and initial counter block read from ``os.urandom`` on every call: each
sharing has its own key, nothing links one sharing's masks to another's, and torch's generator is
neither read nor advanced, so a ``--seed`` reproduces the model and never a mask. AES-CTR rather
than ``os.urandom`` for the bulk: the masks are as unpredictable as the 48 OS-random bytes of key and
counter, and the cipher is several times faster than reading a million masks from the kernel.

Everything else is syft's: the share layout (``mask0``, ``mask1 - mask0``, ..., ``secret - mask_last``),
the rings (int64, int32, and the "custom" fields SecureNN uses, whose masks are drawn uniformly over
the field by rejection), ``self.modulo``, and the call ``ptr.fix_prec().share(...)``.
"""

import os
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# syft's own generate_shares, recorded by install_csprng_shares() so tests and benchmarks can run it.
SYFT_GENERATE_SHARES: Optional[Callable[..., Any]] = None

_NUMPY_DTYPE = {torch.int64: np.int64, torch.int32: np.int32}
_RING_BITS = {torch.int64: 64, torch.int32: 32}


class Keystream:
    """AES-256-CTR keystream under a fresh key and counter block from ``os.urandom``."""

    def __init__(self):
        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._encryptor = cipher.encryptor()

    def words(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """The next ``count`` keystream values as a flat ``dtype`` tensor with a storage of its own.

        Its own storage matters: syft serializes a tensor with ``torch.save``, which writes the whole
        storage, so a slice of a larger keystream buffer would carry the other masks along with it.
        """
        np_dtype = _NUMPY_DTYPE[dtype]
        nbytes = count * np.dtype(np_dtype).itemsize
        buffer = bytearray(nbytes + 15)  # update_into wants room for one more (partial) block
        self._encryptor.update_into(bytes(nbytes), buffer)  # encrypting zeros yields the keystream
        return torch.from_numpy(np.frombuffer(buffer, np_dtype, count))


def uniform_below(keystream: Keystream, count: int, field: int) -> torch.Tensor:
    """int64 values uniform over [0, field), 1 < field < 2**64, by rejection (each draw kept with p > 1/2).

    For a field above 2**63 the values are those of [0, field) modulo 2**64 (int64 wraps).
    """
    bits = (field - 1).bit_length()
    out = torch.empty(count, dtype=torch.int64)
    todo = torch.arange(count)  # positions still to fill (masked_select: syft's hook breaks boolean indexing)
    while todo.numel():
        draw = keystream.words(todo.numel(), torch.int64)
        if bits < 64:
            draw &= (1 << bits) - 1
            kept = draw < field
        else:  # unsigned comparison draw < field: flipping the top bit maps unsigned order onto signed order
            kept = (draw ^ -(2**63)) < field - 2**63
        out.index_copy_(0, todo.masked_select(kept), draw.masked_select(kept))
        todo = todo.masked_select(~kept)
    return out


def uniform_mask(keystream: Keystream, shape: torch.Size, field: int, min_value: int, dtype: torch.dtype):
    """One mask of ``shape``: values uniform over syft's ring [min_value, min_value + field) as ``dtype``."""
    if dtype not in _RING_BITS or not 1 < field <= 2 ** _RING_BITS[dtype]:
        raise ValueError(f"cannot draw share masks for a field of {field} in {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    if field == 2 ** _RING_BITS[dtype]:  # the whole int64 / int32 ring: every bit pattern, equally likely
        return keystream.words(count, dtype).view(shape)
    # torch 1.4's stubs lack Tensor.add_
    return uniform_below(keystream, count, field).add_(min_value).to(dtype).view(shape)  # type: ignore[attr-defined]


def generate_shares(self, secret, n_workers: int, random_type) -> List[torch.Tensor]:
    """syft's ``AdditiveSharingTensor.generate_shares`` with masks from a fresh AES-CTR keystream.

    Same arguments, share layout, dtype handling and ``self.modulo`` as syft's; only the masks differ.
    """
    if n_workers < 2:
        raise ValueError(f"additive sharing needs at least 2 share owners, got {n_workers}")
    random_type = torch.LongTensor if random_type == torch.int64 else torch.IntTensor
    if not isinstance(secret, random_type):
        secret = secret.type(random_type)
    dtype = torch.int64 if random_type is torch.LongTensor else torch.int32
    keystream = Keystream()
    masks = [uniform_mask(keystream, secret.shape, self.field, self.min_value, dtype) for _ in range(n_workers - 1)]
    shares = [masks[0]] + [later - earlier for earlier, later in zip(masks, masks[1:])] + [secret - masks[-1]]
    return [self.modulo(share) for share in shares]


def install_csprng_shares() -> None:
    """Make syft's additive sharing draw its masks with :func:`generate_shares`; once per process.

    Later calls do nothing, so a test that puts syft's original back (``SYFT_GENERATE_SHARES``) keeps it
    for its duration even if the code under test calls ``create_hook`` again.
    """
    global SYFT_GENERATE_SHARES
    from syft.frameworks.torch.tensors.interpreters.additive_shared import AdditiveSharingTensor

    if SYFT_GENERATE_SHARES is None:
        SYFT_GENERATE_SHARES = AdditiveSharingTensor.generate_shares
        AdditiveSharingTensor.generate_shares = generate_shares
