"""The shapes factor oracle: trains to high held-out accuracy, saves and loads."""
import numpy as np
import pytest

from isodiff_jax.analysis.networks import oracle


pytestmark = pytest.mark.slow  # trains the oracle (about a minute)


@pytest.fixture(scope="module")
def trained():
    model = oracle.train(24, steps=400, batch_size=32, progress=False)  # the CLI default: 32×32, 3000 steps
    return model, oracle.evaluate(model, num=512)


def test_oracle_reads_every_factor_of_held_out_shapes(trained):
    _, metrics = trained
    assert metrics["shape_accuracy"] > 0.95, metrics
    for name in oracle.CONTINUOUS:
        assert metrics[f"r2_{name}"] > 0.85, metrics


def test_saved_oracle_predicts_the_same(trained, tmp_path):
    model, metrics = trained
    oracle.save(model, str(tmp_path), metrics)
    back = oracle.load(str(tmp_path))
    images, _ = oracle.images_of(5, np.arange(8), 24)
    np.testing.assert_array_equal(back.features(images), model.features(images))
    with pytest.raises(ValueError, match=r"\(B, 24, 24, 3\)"):
        back.predict(images[:, :8])


def test_targets_and_decode_round_trip():
    factors = oracle.shapes.sample_factors(0, np.arange(50))
    shape, regression = oracle.targets(factors)
    logits = np.eye(3)[shape] * 10
    decoded = oracle.decode(logits, regression)
    for name in oracle.shapes.FACTORS:
        np.testing.assert_allclose(decoded[name], factors[name], atol=1e-6)


def test_missing_oracle_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m isodiff_jax.analysis.networks.oracle"):
        oracle.load(str(tmp_path))
