"""secaggexample: a NumPyClient under secaggplus_mod; client 0 sleeps past the timeout."""

import time

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context


class Client(NumPyClient):
    def __init__(self, pid: int, context: Context):
        self.pid, self.cfg = pid, context.run_config

    def fit(self, parameters, config):
        if self.pid == 0:  # the example's demo: this client drops out by being too slow
            time.sleep(self.cfg["sleep-s"])
        rng = np.random.default_rng(
            [int(self.cfg["seed"]), self.pid, int(config.get("server_round", 0))]
        )
        return [p + rng.random(p.shape).astype(p.dtype) for p in parameters], 10, {}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"]), context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
