"""Real SMS messages for the spam filter: ``corpus`` (load, split, partition, featurise, score) and
``experiment`` (the secure federated run with centralized and always-ham baselines)."""
