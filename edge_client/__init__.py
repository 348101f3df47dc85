"""fedfleet edge_client package."""
