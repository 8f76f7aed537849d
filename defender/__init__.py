"""defender package."""
