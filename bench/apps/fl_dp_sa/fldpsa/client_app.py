"""fldpsa: a NumPyClient under Flower's secaggplus_mod and fixedclipping_mod."""

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context


class Client(NumPyClient):
    def __init__(self, pid: int, seed: int):
        self.pid, self.seed = pid, seed

    def fit(self, parameters, config):
        rng = np.random.default_rng([self.seed, self.pid, int(config.get("server_round", 0))])
        update = [p + rng.normal(0.0, 0.1, size=p.shape).astype(p.dtype) for p in parameters]
        return update, 20, {"train_loss": float(rng.random())}


def client_fn(context: Context):
    return Client(
        int(context.node_config["partition-id"]), int(context.run_config["seed"])
    ).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod, fixedclipping_mod])
