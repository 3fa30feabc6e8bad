"""The factor oracle for the built-in shapes data set: a small CNN that reads every ground-truth
factor (shape, object hue, background hue, scale, x, y) off an image. Analysis uses it to measure
what moves along interpolations and edits, and as the feature extractor of `fd_oracle`.

Train it once with

    python -m isodiff_jax.analysis.networks.oracle --out runs/oracle --resolution 32

which prints the held-out accuracy and R² per factor and writes `runs/oracle/` (Orbax
parameters + oracle.json). Hues are circular, so they are regressed as (cos 2πh, sin 2πh) and
scored by R² on that embedding; scale, x and y are regressed on their ranges mapped to [0, 1].
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
import orbax.checkpoint as ocp

from isodiff_jax import storage
from isodiff_jax.data import pipeline, shapes
from isodiff_jax.errors import MissingPath
from isodiff_jax.progress import StepBar

CIRCULAR = ("object_hue", "background_hue")
LINEAR = ("scale", "x", "y")
CONTINUOUS = CIRCULAR + LINEAR
NUM_OUTPUTS = len(shapes.SHAPE_NAMES) + 2 * len(CIRCULAR) + len(LINEAR)


def conv_features(x, channels: Sequence[int], features: int):
    """The oracle's trunk, called inside a compact module's __call__ (its layers are that module's):
    images (B, R, R, C) -> features (B, F)."""
    for i, c in enumerate(channels):
        x = nn.relu(nn.Conv(c, (3, 3), name=f"conv{i}a")(x))
        x = nn.relu(nn.Conv(c, (3, 3), name=f"conv{i}b")(x))
        if i < len(channels) - 1:
            x = nn.avg_pool(x, (2, 2), (2, 2))
    # keep where things are: flatten a coarse 4×4 map rather than pooling globally
    x = jax.image.resize(x, (x.shape[0], 4, 4, x.shape[-1]), "linear")
    return nn.relu(nn.Dense(features, name="features")(x.reshape(x.shape[0], -1)))


class OracleNet(nn.Module):
    """images (B, R, R, 3) in [-1, 1] -> (shape logits (B, 3), regression (B, 7), features (B, F))."""
    channels: Sequence[int] = (32, 64, 128)
    features: int = 128

    @nn.compact
    def __call__(self, x):
        features = conv_features(x, self.channels, self.features)
        out = nn.Dense(NUM_OUTPUTS, name="head")(features)
        k = len(shapes.SHAPE_NAMES)
        return out[:, :k], out[:, k:], features


def targets(factors) -> tuple[np.ndarray, np.ndarray]:
    """factors -> (shape (B,) int, regression targets (B, 7)): (cos, sin) per hue, then scale, x, y in [0, 1]."""
    columns = []
    for name in CIRCULAR:
        angle = 2 * np.pi * np.asarray(factors[name])
        columns += [np.cos(angle), np.sin(angle)]
    for name in LINEAR:
        low, high = shapes.FACTOR_RANGES[name]
        columns.append((np.asarray(factors[name]) - low) / (high - low))
    return np.asarray(factors["shape"], np.int32), np.stack(columns, axis=1).astype(np.float32)


def decode(logits, regression) -> dict:
    """Network outputs -> predicted factors in the units of `shapes.FACTORS`."""
    regression = np.asarray(regression, np.float64)
    out = {"shape": np.asarray(jnp.argmax(logits, axis=-1), np.int32)}
    for i, name in enumerate(CIRCULAR):
        out[name] = np.mod(np.arctan2(regression[:, 2 * i + 1], regression[:, 2 * i]) / (2 * np.pi), 1.0)
    for j, name in enumerate(LINEAR):
        low, high = shapes.FACTOR_RANGES[name]
        out[name] = low + (high - low) * regression[:, 2 * len(CIRCULAR) + j]
    return out


def images_of(seed: int, indices, resolution: int) -> tuple[np.ndarray, dict]:
    factors = shapes.sample_factors(seed, indices)
    return pipeline.to_unit_range(shapes.render(factors, resolution)), factors


def chunked_outputs(apply, params, images, resolution: int, batch_size: int, name: str) -> tuple:
    """apply(params, images) -> outputs, run on images (B, R, R, 3) in [-1, 1] in chunks of
    batch_size, the last one padded (any B compiles at most one shape), as NumPy arrays."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (resolution, resolution, 3):
        raise ValueError(f"{name} expects (B, {resolution}, {resolution}, 3) images in [-1, 1], "
                         f"got shape {images.shape}")
    size = min(batch_size, len(images))
    parts = []
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
        parts.append([np.asarray(o)[:len(chunk)] for o in apply(params, padded)])
    return tuple(np.concatenate(columns) for columns in zip(*parts))


def save_net(directory: str, params, meta_name: str, meta: dict) -> None:
    """params (Orbax, directory/params) and meta as JSON (directory/meta_name)."""
    directory = storage.absolute(directory)
    with ocp.StandardCheckpointer() as checkpointer:  # the context waits for the asynchronous write
        checkpointer.save(storage.join(directory, "params"), params, force=True)
    storage.write_json(storage.join(directory, meta_name), meta, indent=2)


def load_meta(directory: str, meta_name: str, how: str) -> dict:
    """directory/meta_name as a dict, or MissingPath saying `how` to make it."""
    meta_path = storage.join(storage.absolute(directory), meta_name)
    if not storage.exists(meta_path):
        raise MissingPath(f"{meta_path} does not exist: {how}")
    return storage.read_record(meta_path, f"move it away, then {how}")


def restore_params(directory: str, net, resolution: int):
    """The Orbax parameters under directory/params, shaped as net's for R × R images."""
    shapes_ = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, resolution, resolution, 3)))
    return ocp.StandardCheckpointer().restore(storage.join(storage.absolute(directory), "params"), shapes_)


@dataclasses.dataclass(frozen=True)
class Oracle:
    """A trained oracle: `predict(images)` -> factors, `features(images)` -> (B, F)."""
    net: OracleNet
    params: dict
    resolution: int

    @functools.cached_property
    def _apply(self):
        return jax.jit(self.net.apply)

    def outputs(self, images, batch_size: int = 256):
        """images (B, R, R, 3) in [-1, 1] -> (logits, regression, features) as NumPy arrays.

        Runs in chunks of batch_size, the last one padded, so any B compiles at most one shape."""
        return chunked_outputs(self._apply, self.params, images, self.resolution, batch_size, "the oracle")

    def predict(self, images) -> dict:
        logits, regression, _ = self.outputs(images)
        return decode(logits, regression)

    def features(self, images) -> np.ndarray:
        return self.outputs(images)[2]

    def shape_probabilities(self, images) -> np.ndarray:
        """(B, 3) softmax over SHAPE_NAMES."""
        return np.asarray(jax.nn.softmax(self.outputs(images)[0], axis=-1))


def train(resolution: int, *, steps: int = 3000, batch_size: int = 64, learning_rate: float = 2e-3,
          seed: int = 1, progress: bool = True) -> Oracle:
    """Trains an oracle on freshly generated shapes (seed `seed`, a new batch every step)."""
    net = OracleNet()
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, resolution, resolution, 3)))
    optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, shape, regression):
        def loss_fn(p):
            logits, predicted, _ = net.apply(p, images)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, shape).mean()
            return ce + 10.0 * jnp.mean(jnp.square(predicted - regression))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    bar = StepBar(steps, desc="oracle", disable=not progress)
    for s in range(steps):
        images, factors = images_of(seed, np.arange(s * batch_size, (s + 1) * batch_size), resolution)
        params, opt_state, loss = step(params, opt_state, images, *targets(factors))
        bar.track(loss)
    bar.close()
    return Oracle(net=net, params=params, resolution=resolution)


def r2(true, predicted) -> float:
    """Coefficient of determination over all columns: 1 − SS_res / SS_tot; (N,) or (N, D)."""
    true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
    total = np.sum(np.square(true - true.mean(axis=0)))
    return float(1.0 - np.sum(np.square(true - predicted)) / total)


def scores(factors: dict, predicted: dict) -> dict:
    """Shape accuracy and R² per continuous factor (hues on their (cos, sin) embedding)."""
    out = {"shape_accuracy": float(np.mean(predicted["shape"] == factors["shape"]))}
    _, true_reg = targets(factors)
    _, pred_reg = targets({**predicted, "shape": predicted["shape"]})
    for i, name in enumerate(CIRCULAR):
        out[f"r2_{name}"] = r2(true_reg[:, 2 * i:2 * i + 2], pred_reg[:, 2 * i:2 * i + 2])
    for name in LINEAR:
        out[f"r2_{name}"] = r2(factors[name], predicted[name])
    return out


def evaluate(oracle: Oracle, *, seed: int = 2, num: int = 2048, batch_size: int = 256) -> dict:
    """Scores on `num` held-out shapes (a seed the oracle was not trained on)."""
    predicted, factors = [], []
    for start in range(0, num, batch_size):
        images, f = images_of(seed, np.arange(start, min(start + batch_size, num)), oracle.resolution)
        predicted.append(oracle.predict(images))
        factors.append(f)
    join = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return scores(join(factors), join(predicted))


def save(oracle: Oracle, directory: str, metrics: dict) -> None:
    save_net(directory, oracle.params, "oracle.json",
             {"resolution": oracle.resolution, "channels": list(oracle.net.channels),
              "features": oracle.net.features, "held_out": metrics})


def load(directory: str) -> Oracle:
    meta = load_meta(directory, "oracle.json",
                     f"train an oracle with `python -m isodiff_jax.analysis.networks.oracle --out {storage.absolute(directory)}`")
    net = OracleNet(channels=tuple(meta["channels"]), features=meta["features"])
    return Oracle(net=net, params=restore_params(directory, net, meta["resolution"]), resolution=meta["resolution"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isodiff_jax.analysis.networks.oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/oracle", help="where the oracle is written")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    oracle = train(args.resolution, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    metrics = evaluate(oracle, seed=args.seed + 1)
    save(oracle, args.out, metrics)
    print("held-out: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"oracle written to {storage.absolute(args.out)}")


if __name__ == "__main__":
    main()
