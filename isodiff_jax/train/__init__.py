"""Training: the state, the loss and the step (`step`), the loop (`loop`), what the user sees (`monitor`)."""
