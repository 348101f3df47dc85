"""fedfleet fleet package."""
