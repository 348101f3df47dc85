"""fedfleet strategies package."""
