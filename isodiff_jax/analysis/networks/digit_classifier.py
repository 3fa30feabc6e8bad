"""A digit classifier for the built-in "digits" data set, the digits' counterpart of the shapes
factor oracle: its features give a Fréchet distance (`fd_classifier`), its probabilities the
confident share of samples and the class purity of edits (`scoring.ClassReader`).

Trained like the oracle (same trunk, `oracle.conv_features`; AdamW with cosine decay) on the
first `digits.TEST_START` scans, with random shifts of up to one pixel at the scans' 8×8
scale, and scored on the held-out rest:

    python -m isodiff_jax.analysis.networks.digit_classifier --out runs/digits_classifier --resolution 16
"""
import argparse
import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from isodiff_jax import storage
from isodiff_jax.analysis.networks import oracle as oracle_lib
from isodiff_jax.data import digits, pipeline
from isodiff_jax.progress import StepBar

CLASS_NAMES = tuple(f"digit_{c}" for c in range(digits.NUM_CLASSES))


class ClassifierNet(nn.Module):
    """images (B, R, R, 3) in [-1, 1] -> (logits (B, 10), features (B, F))."""
    channels: Sequence[int] = (32, 64, 128)
    features: int = 128

    @nn.compact
    def __call__(self, x):
        features = oracle_lib.conv_features(x, self.channels, self.features)
        return nn.Dense(digits.NUM_CLASSES, name="head")(features), features


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained classifier: probabilities(images) -> (B, 10), features(images) -> (B, F)."""
    net: ClassifierNet
    params: dict
    resolution: int

    @functools.cached_property
    def _apply(self):
        return jax.jit(self.net.apply)

    def outputs(self, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """images (B, R, R, 3) in [-1, 1] -> (logits, features), in padded chunks of one shape."""
        return oracle_lib.chunked_outputs(self._apply, self.params, images, self.resolution, batch_size,
                                          "the classifier")

    def probabilities(self, images) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self.outputs(images)[0], axis=-1))

    def features(self, images) -> np.ndarray:
        return self.outputs(images)[1]

    def predict(self, images) -> np.ndarray:
        return np.argmax(self.outputs(images)[0], axis=-1).astype(np.int32)


def images_and_labels(indices, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    source = digits.DigitsSource(resolution)
    return pipeline.to_unit_range(source.get(indices)), source.labels(indices)


def _shift(images, rng, max_shift: int) -> np.ndarray:
    """Each image moved by up to max_shift pixels in x and y (the background, -1, fills in)."""
    out = np.full_like(images, -1.0)
    r = images.shape[1]
    for b, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, (len(images), 2))):
        out[b, max(dy, 0):r + min(dy, 0), max(dx, 0):r + min(dx, 0)] = \
            images[b, max(-dy, 0):r - max(dy, 0), max(-dx, 0):r - max(dx, 0)]
    return out


def train(resolution: int, *, steps: int = 1500, batch_size: int = 64, learning_rate: float = 2e-3, seed: int = 1,
          progress: bool = True) -> Classifier:
    """Trains on scans 0 … TEST_START − 1, a random batch with random shifts every step."""
    net = ClassifierNet()
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, resolution, resolution, 3)))
    optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
    opt_state = optimizer.init(params)
    images, labels = images_and_labels(np.arange(digits.TEST_START), resolution)
    rng = np.random.default_rng(seed)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, images)[0], labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    bar = StepBar(steps, desc="digit classifier", disable=not progress)
    for s in range(steps):
        batch = rng.choice(len(images), batch_size, replace=False)
        params, opt_state, loss = step(params, opt_state, _shift(images[batch], rng, resolution // 8), labels[batch])
        bar.track(loss)
    bar.close()
    return Classifier(net=net, params=params, resolution=resolution)


def evaluate(classifier: Classifier) -> dict:
    """Accuracy and confident share on the held-out scans TEST_START …"""
    images, labels = images_and_labels(np.arange(digits.TEST_START, digits.NUM_EXAMPLES), classifier.resolution)
    p = classifier.probabilities(images)
    return {"accuracy": float(np.mean(np.argmax(p, axis=-1) == labels)),
            "confident_fraction": float(np.mean(p.max(axis=-1) >= 0.9)), "num_test": len(labels)}


def save(classifier: Classifier, directory: str, metrics: dict) -> None:
    oracle_lib.save_net(directory, classifier.params, "classifier.json",
                        {"resolution": classifier.resolution, "channels": list(classifier.net.channels),
                         "features": classifier.net.features, "held_out": metrics})


def load(directory: str) -> Classifier:
    meta = oracle_lib.load_meta(directory, "classifier.json", "train a digit classifier with "
                                f"`python -m isodiff_jax.analysis.networks.digit_classifier --out {storage.absolute(directory)}`")
    net = ClassifierNet(channels=tuple(meta["channels"]), features=meta["features"])
    r = meta["resolution"]
    return Classifier(net=net, params=oracle_lib.restore_params(directory, net, r), resolution=r)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digits_classifier", help="where the classifier is written")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    classifier = train(args.resolution, steps=args.steps, seed=args.seed)
    metrics = evaluate(classifier)
    save(classifier, args.out, metrics)
    print("held-out: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    print(f"classifier written to {storage.absolute(args.out)}")


if __name__ == "__main__":
    main()
