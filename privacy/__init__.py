"""fedfleet privacy package."""
