"""Evaluators over trained checkpoints (method.md §6): each yields (name, value) pairs and runs
both from a checkpoint (`load`) and inside training."""
