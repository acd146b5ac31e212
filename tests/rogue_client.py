"""A client attacking the data owners while a legitimate run goes on (test_policy runs it as a process).

    python rogue_client.py NAME=HOST:PORT,... STOP_FILE [PAUSE_SECONDS]

It connects like any model owner (plain ws://, no credentials) and repeats, on every owner: reads
(search, shape, a tainted scalar), gets the policy must refuse, and writes into or deletes the
owner's data, pausing between rounds of attacks, until STOP_FILE exists. It prints "ready" after
its first round of attacks, then one JSON line: how each attack ended and when each round finished.
"""
import json
import os
import sys
import time
from collections import Counter

import torch
from syft.exceptions import GetNotPermittedError
from syft.messaging.message import ForceObjectDeleteMessage

from fl_smpc.config import parse_addresses
from fl_smpc.errors import WorkerUnreachable
from fl_smpc.network.client import find_data, network_workers


def attacks(client):
    data, target = find_data(client)  # a read: search by tag
    yield "read: shape", lambda: data.shape
    yield "read: tainted scalar", lambda: torch.cat([data]).sum().get()
    yield "get: data", lambda: data.get()
    yield "get: data + 0", lambda: (data + 0).get()
    yield "get: copy of labels", lambda: torch.cat([target]).get()
    yield "write: data.mul_(0)", lambda: data.mul_(0)
    yield "write: data.add_(1)", lambda: data.add_(1)
    yield "write: delete data", lambda: client.send_msg(ForceObjectDeleteMessage([data.child.id_at_location]),
                                                         location=client)


def main(argv) -> int:
    addresses, stop_file = parse_addresses(argv[0]), argv[1]
    pause = float(argv[2]) if len(argv) > 2 else 0.0
    certs = argv[3] if len(argv) > 3 else None  # the model owner's certificate (a valid one): mutual TLS
    outcomes, finished = Counter(), []
    while not os.path.exists(stop_file):
        try:
            with network_workers(addresses, timeout=20, certs=certs) as clients:
                while not os.path.exists(stop_file):
                    for client in clients:
                        for name, attack in attacks(client):
                            try:
                                attack()
                                outcomes[f"{name}: allowed"] += 1
                            except GetNotPermittedError:
                                outcomes[f"{name}: refused"] += 1
                    finished.append(time.time())
                    if len(finished) == 1:
                        print("ready", flush=True)
                    time.sleep(pause)
        except WorkerUnreachable as err:  # a worker closed our connection: note it and reconnect
            outcomes[f"connection closed: {err}"] += 1
    print(json.dumps({"outcomes": outcomes, "finished": finished}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
