"""Real images: scikit-learn's handwritten digits (1,797 8×8 scans, upsampled to 16×16), with the
model, schedule and from-scratch recipe of configs/shapes16.py (experiments/disentanglement.py
trains it at λ = 0 and at the shapes study's best λ)."""
from configs import shapes16


def get_config():
    c = shapes16.get_config()
    c.data.name = "digits"
    return c
