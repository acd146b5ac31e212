"""The transports and files around the protocol: links (in-process and websocket), the wire format,
mutual TLS, the owners' CSV files, and local worker processes for the demo and the tests.

Importing this package is light; none of its modules loads syft.
"""
