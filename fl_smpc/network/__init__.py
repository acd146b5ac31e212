"""Network mode: data owners as separate ``fl-smpc worker`` processes speaking syft 0.2.9's websocket protocol.

``client`` is the model owner's side, ``server`` a data owner's, ``policy`` the owner's release policy
enforced in its server (``wire`` reads a message before syft builds objects from it), ``csvdata`` the
owner's data file, ``launcher`` starts local worker processes (demo and tests) and always stops them,
``tls`` makes certificates and the mutual-TLS contexts of both sides.
Importing this package is light; its modules load syft.
"""

DATA_TAG, TARGET_TAG = "#fl-smpc-data", "#fl-smpc-target"
