"""fedfleet simulation package."""
