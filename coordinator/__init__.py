"""fedfleet coordinator package."""
