"""Ray side of chatdf: the per-user session actor, the dataset and SQL tasks, the model client."""
