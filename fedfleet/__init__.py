"""fedfleet: federated learning coordinator with an edge device fleet."""

__version__ = "0.1.0"
