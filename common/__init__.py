"""The leaf every package may import and that imports nothing of ours: the error tree."""
