"""Training: state, optimizer, step factories (and, later, the loop and checkpoints)."""
