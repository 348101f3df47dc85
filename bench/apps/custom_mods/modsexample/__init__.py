"""The custom-mods pattern: a ClientApp wrapped in the user's own mods (timing and a per-node metrics log), FedAvg ServerApp."""
