"""Linear probes from h to the ground-truth factors of the shapes data set.

Real shapes images with known factors (for latent diffusion: their latents) are noised to x_t, encoded to h = e_θ(x_t, t) (optionally
average-pooled) and a ridge regression from h to the factors' targets (`oracle.targets`: the
(cos, sin) embedding of each hue, scale, x and y mapped to [0, 1], plus a one-hot shape) is fitted
on `num_train` images and scored on `num_test` others: R² per continuous factor (hues on their
embedding, as the oracle is scored) and shape accuracy (argmax of the one-hot fit). No oracle is
involved: the factors are the generator's own.

The ridge penalty is chosen per timestep from RIDGE_GRID on a held-back quarter of the training
images (h has thousands of dimensions against hundreds of images, so a fixed small penalty
overfits badly at high noise); the test images are never used to choose it.
"""
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import diffusion, sharding
from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.analysis.measures import spectrum
from isodiff_jax.analysis.networks import oracle as oracle_lib
from isodiff_jax.data import shapes


def ridge_fit_predict(features, targets, test_features, *, ridge: float) -> np.ndarray:
    """Ridge regression with an intercept, solved in the dual (N × N) so that D ≫ N is cheap.

    features (N, D), targets (N, K), test_features (M, D) -> predictions (M, K). The penalty is
    ridge · mean eigenvalue of the centred Gram matrix, so `ridge` does not depend on h's scale.
    """
    x = np.asarray(features, np.float64)
    mean_x, mean_y = x.mean(axis=0), targets.mean(axis=0)
    x = x - mean_x
    gram = x @ x.T
    penalty = ridge * np.trace(gram) / len(x)
    coef = np.linalg.solve(gram + penalty * np.eye(len(x)), targets - mean_y)
    return (np.asarray(test_features, np.float64) - mean_x) @ (x.T @ coef) + mean_y


RIDGE_GRID = tuple(10.0 ** np.arange(-4, 4))


def choose_ridge(features, targets, grid=RIDGE_GRID, validation_fraction: float = 0.25) -> float:
    """The penalty of `grid` with the smallest validation squared error, fitting on the first
    (1 − validation_fraction) of the rows and validating on the rest."""
    split = int(round(len(features) * (1 - validation_fraction)))
    if split < 2 or split >= len(features):
        raise ValueError(f"cannot hold back {validation_fraction} of {len(features)} rows for validation")
    errors = [np.sum(np.square(ridge_fit_predict(features[:split], targets[:split], features[split:], ridge=r)
                               - targets[split:])) for r in grid]
    return float(grid[int(np.argmin(errors))])


def _probe_targets(factors: dict) -> np.ndarray:
    shape, regression = oracle_lib.targets(factors)
    return np.concatenate([regression, np.eye(len(shapes.SHAPE_NAMES))[shape]], axis=1)


def probe_scores(train_h, train_factors: dict, test_h, test_factors: dict, *, ridge: float | None = None) -> dict:
    """Held-out R² per continuous factor and shape accuracy of a ridge probe h -> factors, and
    the penalty used (chosen on the training rows when ridge is None).

    R² is taken on the regressed targets themselves (a hue's predicted (cos, sin) pair, not the
    angle it decodes to: a prediction shrunk towards the mean has no meaningful angle)."""
    targets = _probe_targets(train_factors)
    ridge = choose_ridge(train_h, targets) if ridge is None else ridge
    predicted = ridge_fit_predict(train_h, targets, test_h, ridge=ridge)
    true = _probe_targets(test_factors)
    scores = {"shape_accuracy": float(np.mean(np.argmax(predicted[:, -len(shapes.SHAPE_NAMES):], axis=1)
                                              == test_factors["shape"]))}
    for i, name in enumerate(oracle_lib.CIRCULAR):
        scores[f"r2_{name}"] = oracle_lib.r2(true[:, 2 * i:2 * i + 2], predicted[:, 2 * i:2 * i + 2])
    for j, name in enumerate(oracle_lib.LINEAR, start=2 * len(oracle_lib.CIRCULAR)):
        scores[f"r2_{name}"] = oracle_lib.r2(true[:, j], predicted[:, j])
    return {**scores, "ridge": ridge}


class NoisedH:
    """h = pool(e_θ(x_t, t)) of fixed images (N, ...) noised to x_t at any t, flattened: (N, D).

    to_x0(params, images) -> x0 is what is noised (latent diffusion: the autoencoder's latents,
    `ModelSpec.to_x0`; None: the images). Jitted once; `__call__(params, t)` compiles nothing for
    new parameters or t."""

    def __init__(self, encode: Callable, schedule: diffusion.Schedule, images, *, pool: int = 1,
                 batch_size: int = 64, seed: int = 0, mesh: Optional[Mesh] = None,
                 to_x0: Optional[Callable] = None):
        self.images, self.batch_size, self.key, self.mesh = images, batch_size, jax.random.PRNGKey(seed), mesh

        def features(params, images, t, k):
            x0 = images if to_x0 is None else to_x0(params, images)
            t_vec = jnp.full((x0.shape[0],), t, jnp.int32)
            x_t = diffusion.q_sample(schedule, x0, t_vec, jax.random.normal(k, x0.shape))
            h = spectrum.average_pool(encode(params, x_t, t_vec), pool)
            return h.reshape(h.shape[0], -1)
        self._features = jax.jit(features)

    def __call__(self, params, t) -> np.ndarray:
        return np.concatenate([
            sharding.to_host(self._features(params, sharding.put_rows(self.images[i:i + self.batch_size], self.mesh),
                                            t, np.asarray(jax.random.fold_in(self.key, i))))
            for i in range(0, len(self.images), self.batch_size)])


def value_names(timesteps: Sequence[int]) -> tuple[str, ...]:
    """The values `LinearProbe` measures."""
    scores = ("shape_accuracy", *(f"r2_{name}" for name in (*oracle_lib.CIRCULAR, *oracle_lib.LINEAR)), "ridge")
    return (*(f"probe_t{t}_{score}" for t in timesteps for score in scores), "probe_r2", "probe_shape_accuracy")


def class_value_names(timesteps: Sequence[int]) -> tuple[str, ...]:
    """The values `ClassProbe` measures."""
    return (*(f"probe_t{t}_class_accuracy" for t in timesteps), "probe_class_accuracy")


class LinearProbe(Evaluator):
    """Evaluator: values "probe_t{t}_<score>" per timestep, "probe_r2" (the mean R² over the
    continuous factors and timesteps) and "probe_shape_accuracy" (mean over timesteps).

    encode(params, x (B, R, R, 3), t int32 (B,)) -> h; images come from `shapes` with
    `image_seed` and their noise from `seed`; to_x0 as `NoisedH`; ridge None chooses the penalty
    per timestep (reported as probe_t{t}_ridge). Built once; `run(params)` compiles nothing for
    new parameters.
    """

    def __init__(self, encode: Callable, schedule: diffusion.Schedule, *, resolution: int,
                 timesteps: Sequence[int], num_train: int = 512, num_test: int = 256, pool: int = 1,
                 ridge: float | None = None, batch_size: int = 64, image_seed: int = 5, seed: int = 0,
                 mesh: Optional[Mesh] = None, to_x0: Optional[Callable] = None):
        images, self.factors = oracle_lib.images_of(image_seed, np.arange(num_train + num_test), resolution)
        self.timesteps, self.num_train, self.ridge = tuple(timesteps), num_train, ridge
        self._h = NoisedH(encode, schedule, images, pool=pool, batch_size=batch_size, seed=seed, mesh=mesh,
                          to_x0=to_x0)

    def measure(self, params) -> Measured:
        n = self.num_train
        train = {k: v[:n] for k, v in self.factors.items()}
        test = {k: v[n:] for k, v in self.factors.items()}
        r2s, accuracies, values = [], [], {}
        for t in self.timesteps:
            h = self._h(params, t)
            scores = probe_scores(h[:n], train, h[n:], test, ridge=self.ridge)
            values.update({f"probe_t{t}_{name}": float(value) for name, value in scores.items()})
            r2s += [v for name, v in scores.items() if name.startswith("r2_")]
            accuracies.append(scores["shape_accuracy"])
        values.update(probe_r2=float(np.mean(r2s)), probe_shape_accuracy=float(np.mean(accuracies)))
        return Measured(values)


def class_probe_accuracy(train_h, train_labels, test_h, test_labels, *, num_classes: int,
                         ridge: float | None = None) -> tuple[float, float]:
    """(held-out accuracy, penalty) of a ridge probe from h to one-hot labels (argmax decides);
    the penalty is chosen on the training rows when ridge is None."""
    targets = np.eye(num_classes)[np.asarray(train_labels)]
    ridge = choose_ridge(train_h, targets) if ridge is None else ridge
    predicted = ridge_fit_predict(train_h, targets, test_h, ridge=ridge)
    return float(np.mean(np.argmax(predicted, axis=1) == np.asarray(test_labels))), ridge


class ClassProbe(Evaluator):
    """Evaluator: a ridge probe from h (images noised to each t) to class labels, fitted on the
    first num_train images and scored on the rest: values probe_t{t}_class_accuracy and
    probe_class_accuracy (mean over timesteps). images (N, ...) in [-1, 1], labels (N,) ints.
    Built once; `run(params)` compiles nothing for new parameters."""

    def __init__(self, encode: Callable, schedule: diffusion.Schedule, images, labels, *, num_classes: int,
                 timesteps: Sequence[int], num_train: int, pool: int = 1, batch_size: int = 64, seed: int = 0,
                 mesh: Optional[Mesh] = None):
        if not 2 <= num_train < len(images):
            raise ValueError(f"num_train must leave test images: 2 <= num_train < {len(images)}, got {num_train}")
        self.labels, self.num_classes = np.asarray(labels), num_classes
        self.timesteps, self.num_train = tuple(timesteps), num_train
        self._h = NoisedH(encode, schedule, images, pool=pool, batch_size=batch_size, seed=seed, mesh=mesh)

    def measure(self, params) -> Measured:
        n, values = self.num_train, {}
        for t in self.timesteps:
            h = self._h(params, t)
            values[f"probe_t{t}_class_accuracy"], _ = class_probe_accuracy(
                h[:n], self.labels[:n], h[n:], self.labels[n:], num_classes=self.num_classes)
        values["probe_class_accuracy"] = float(np.mean(list(values.values())))
        return Measured(values)
