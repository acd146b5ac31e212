"""What runs on the model owner: the round loop of owner-side training, and its connections to the owners."""
