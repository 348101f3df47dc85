"""fedfleet firmware_images package."""
