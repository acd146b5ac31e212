"""What runs on the model owner."""
