"""The quickstart-pandas pattern: federated analytics, per-client histograms of pandas columns aggregated by query messages."""
