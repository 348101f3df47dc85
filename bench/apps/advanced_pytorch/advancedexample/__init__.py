"""The advanced-pytorch pattern: stateful clients (Context state), a FedAvg subclass with a per-round learning-rate schedule, central evaluation on the server and checkpoints."""
