"""Networks loaded or trained to measure with: Inception-v3 (FID) and LPIPS converted from torch
weights (`torch_weights`), the shapes factor oracle and the digit classifier."""
