"""What runs on a data owner."""
