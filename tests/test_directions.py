"""Pullback directions (local basis) against dense float64 SVDs, and the edit scores on closed cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax.analysis.edits import controls, factors, pullback, scoring
from isodiff_jax.data import shapes
from isodiff_jax.unet import UNet


def _orthogonal(rng, size):
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def _dense_svd(fn, x):
    """(s (B, k), right singular vectors (B, k, n)) of each sample's Jacobian, float64 SVD of jacfwd."""
    flat = x.reshape(x.shape[0], -1)
    jac = jax.vmap(jax.jacfwd(lambda v: fn(v.reshape(1, *x.shape[1:])).reshape(-1)))(flat)
    _, s, vt = np.linalg.svd(np.asarray(jac, np.float64))
    return s, vt


def _assert_same_vectors(v, reference, k, cos=1 - 1e-8):
    """Unit, mutually orthogonal, and equal to the reference up to sign."""
    v = v.reshape(v.shape[0], k, -1)
    gram = np.einsum("bin,bjn->bij", v, v)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(k), gram.shape), atol=1e-6)
    overlap = np.abs(np.einsum("bkn,bkn->bk", v, reference[:, :k]))
    assert np.all(overlap > cos), overlap.min()


@pytest.mark.parametrize("m,n", [(5, 12), (12, 5)])  # L = Jᵀ (vectors from U) and L = J (from V)
def test_local_basis_of_a_designed_linear_map(m, n):
    rng = np.random.default_rng(0)
    d = min(m, n)
    s = np.array([9.0, 7.0, 5.0, 3.0, 2.0][:d])
    u, v = _orthogonal(rng, m)[:, :d], _orthogonal(rng, n)[:, :d]
    a = jnp.asarray(u @ np.diag(s) @ v.T)
    fn = lambda x: x.reshape(x.shape[0], -1) @ a.T
    x = jnp.asarray(rng.standard_normal((3, n)))
    got_s, got_v = pullback.local_basis(fn, x, jax.random.PRNGKey(0), k=3)
    assert got_s.shape == (3, 3) and got_v.shape == (3, 3, n)
    np.testing.assert_allclose(got_s, np.broadcast_to(s[:3], (3, 3)), rtol=1e-12)
    _assert_same_vectors(got_v, np.broadcast_to(v.T, (3, d, n)), 3, cos=1 - 1e-12)


def test_local_basis_of_a_nonlinear_map_matches_dense_svd():
    key = jax.random.PRNGKey(3)
    w1 = jax.random.normal(key, (48, 32), jnp.float64) / np.sqrt(48)
    w2 = jax.random.normal(jax.random.fold_in(key, 1), (32, 20), jnp.float64) / np.sqrt(32)
    fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 3), jnp.float64)
    s_ref, v_ref = _dense_svd(fn, x)
    s, v = pullback.local_basis(fn, x, jax.random.PRNGKey(5), k=4, num_iters=20)  # all 20: exact
    np.testing.assert_allclose(s, s_ref[:, :4], rtol=1e-10)
    _assert_same_vectors(v, v_ref, 4)
    s_part, v_part = pullback.local_basis(fn, x, jax.random.PRNGKey(5), k=2, num_iters=12)  # partial Lanczos
    np.testing.assert_allclose(s_part, s_ref[:, :2], rtol=1e-6)
    _assert_same_vectors(v_part, v_ref, 2, cos=1 - 1e-4)


@pytest.mark.slow  # a dense float64 SVD of a U-Net encoder
def test_local_basis_of_a_unet_encoder_matches_dense_svd():
    """The real encoder (float32, h 4×4×16 = 256 > n = 192), against the float64 SVD of its
    dense Jacobian; the default iteration count (64 of 192) gives the top 4."""
    model = UNet(block_out_channels=(8, 16), attention_levels=(False, False), layers_per_block=1, norm_num_groups=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(1), x, jnp.array([0, 0]))
    encode = lambda x: model.apply(params, x, jnp.full((x.shape[0],), 700), method=UNet.encode)
    s_ref, v_ref = _dense_svd(encode, x)
    s, v = pullback.local_basis(encode, x, jax.random.PRNGKey(2), k=4)
    np.testing.assert_allclose(s, s_ref[:, :4], rtol=2e-5)
    _assert_same_vectors(v, v_ref, 4, cos=1 - 1e-5)


def test_local_basis_rejects_bad_k():
    fn = lambda x: x[:, :3]
    with pytest.raises(ValueError, match="k must be in"):
        pullback.local_basis(fn, jnp.ones((2, 5)), jax.random.PRNGKey(0), k=4)


class _Reader(scoring.FactorReader):
    def __init__(self):
        super().__init__(oracle=None)


def _reading(x, y, scale=0.4):
    b = len(x)
    return {"shape": np.zeros(b, np.int32), "object_hue": np.full(b, 0.1), "background_hue": np.full(b, 0.6),
            "scale": np.full(b, scale), "x": np.asarray(x, float), "y": np.asarray(y, float)}


def test_alpha_response_of_a_pure_linear_edit_and_of_a_mixed_one():
    reader, alphas = _Reader(), (-2.0, -1.0, 1.0, 2.0)
    original = _reading([0.5, 0.5], [0.5, 0.5])
    pure = [_reading([0.5 + 0.02 * a] * 2, [0.5, 0.5]) for a in alphas]
    scores = scoring.alpha_response(reader, original, pure, alphas)
    assert reader.names[scores["dominant"][0]] == "x"
    np.testing.assert_allclose(scores["purity"], 1.0)
    np.testing.assert_allclose(scores["linearity"], 1.0)
    np.testing.assert_allclose(scores["monotone"], 1.0)
    np.testing.assert_allclose(scores["unintended"], 0.0)
    np.testing.assert_allclose(scores["target_change"], 0.05 * 1.5)  # mean |0.02 α| / 0.4
    mixed = [_reading([0.5 + 0.02 * abs(a)] * 2, [0.5 + 0.02 * a] * 2) for a in alphas]  # x folds, y is linear
    scores = scoring.alpha_response(reader, original, mixed, alphas, target="x")
    np.testing.assert_allclose(scores["purity"], 0.5)
    np.testing.assert_allclose(scores["precision"], 0.5)
    np.testing.assert_allclose(scores["monotone"], 0.0)
    assert np.all(scores["linearity"] < 0.01)  # |α| has no linear trend on a symmetric grid


def test_additivity_error_is_zero_for_additive_edits_and_one_when_the_sum_does_nothing():
    reader = _Reader()
    original = _reading([0.5], [0.5])
    a, b = _reading([0.56], [0.5]), _reading([0.5], [0.44])
    assert scoring.additivity_error(reader, original, a, b, _reading([0.56], [0.44])) == pytest.approx(0.0)
    assert scoring.additivity_error(reader, original, a, b, original) == pytest.approx(1.0)


def test_the_continuous_view_scores_an_edit_without_its_shape_flips():
    """Known answers: a direction that flips the shape at every α and moves x linearly a little.
    Read with all six factors, the flip (1 on the 0/1 scale) dominates: the direction "moves the
    shape" at every sample (consistency 1) and the supervised x edit's precision is small; read
    through the continuous view it moves x alone (purity, linearity, precision 1)."""
    reader, alphas = _Reader(), (-2.0, -1.0, 1.0, 2.0)
    assert scoring.continuous_view(reader).names == factors.CONTINUOUS
    assert scoring.continuous_view(scoring.FactorReader(None, factors.CONTINUOUS)) is None
    assert scoring.continuous_view(scoring.ClassReader(None, ["0", "1"])) is None
    original = _reading([0.5, 0.5], [0.5, 0.5])
    flipped = lambda a: {**_reading([0.5 + 0.02 * a] * 2, [0.5, 0.5]), "shape": np.ones(2, np.int32)}
    edited = [[flipped(a) for a in alphas]]
    scores = pullback.score_directions(reader, original, edited, alphas, "p_")
    assert scores["p_v1_moves_shape"] == 1.0 and scores["p_v1_moves_x"] == 0.0
    assert scores["p_purity"] == pytest.approx((1 / 1.05 + 1 / 1.1) / 2)  # flip 1 against x's 0.05 |α|
    for key in ("purity", "linearity", "monotone", "consistency"):
        assert scores[f"p_continuous_{key}"] == pytest.approx(1.0), key
    assert scores["p_continuous_target_change"] == pytest.approx(0.05 * 1.5)  # mean |0.02 α| / 0.4
    a, b, ab = flipped(1.0), _reading([0.5], [0.5]), flipped(1.0)
    a, b, ab = ({k: v[:1] for k, v in r.items()} for r in (a, b, ab))
    errors = pullback.composition_error(reader, {k: v[:1] for k, v in original.items()}, a, b, ab, "")
    assert errors["additivity_error"] == pytest.approx(0.0) and errors["continuous_additivity_error"] == 0.0
    read_many = lambda shifts: [flipped(float(shift)) for shift in shifts]
    family = scoring.supervised_family(reader, original, read_many, {"x": 1.0}, alphas=alphas, pairs=())
    assert family["x_precision"] == pytest.approx(0.05 * 1.5 / (0.05 * 1.5 + 1.0))
    assert family["continuous_precision"] == pytest.approx(1.0)


def test_read_each_reads_once_and_splits_by_batch():
    calls = []

    class Counting(_Reader):
        def read(self, images):
            calls.append(len(images))
            return _reading(images[:, 0], images[:, 1])
    batches = [np.array([[0.1, 0.2]]), np.array([[0.3, 0.4], [0.5, 0.6]]), np.array([[0.7, 0.8]])]
    readings = scoring.read_each(Counting(), batches)
    assert calls == [4] and [len(r["x"]) for r in readings] == [1, 2, 1]
    np.testing.assert_array_equal(readings[1]["y"], [0.4, 0.6])
    np.testing.assert_array_equal(readings[2]["shape"], [0])


def test_in_batches_calls_with_one_shape_pads_the_last_chunk_and_drops_the_padding():
    from isodiff_jax.analysis.sampling import in_batches
    x, y, shapes_seen = np.arange(10.0), np.arange(10.0) * 10, []

    def fn(a, b):
        shapes_seen.append(a.shape)
        return a + b
    out = in_batches(fn, lambda start, stop: (x[start:stop], y[start:stop]), 10, 4)
    np.testing.assert_array_equal(out, x * 11)
    assert shapes_seen == [(4,)] * 3  # 4 + 4 + 2 rows, the last two padded


@pytest.fixture(scope="module")
def control_scores(oracle16):
    """Every measure on each control, read by the tests' brief oracle on the continuous factors
    (it reads hues and positions well but shapes at chance; the study's 3,000-step oracle reads
    all six: experiments/results/disentanglement/controls.json)."""
    reader = scoring.FactorReader(oracle16, factors.CONTINUOUS)
    return {kind: controls.control_for(kind).measure(reader, num_label=128, num_edit=16, num_probe=256)
            for kind in controls.CONTROLS}


@pytest.mark.slow  # the controls' fixture measures every control
@pytest.mark.parametrize("name,margin", [
    ("supervised_precision", 0.15), ("supervised_linearity", 0.3), ("supervised_monotone", 0.3),
    ("probe_r2", 0.5), ("pullback_purity", 0.05), ("pullback_coverage", 1.0), ("pullback_linearity", 0.2),
    ("supervised_additivity_error", -0.2), ("pullback_additivity_error", -0.2)])
def test_every_measure_scores_both_positive_controls_above_the_negative(control_scores, name, margin):
    """Disentangled by construction (axis-aligned, randomly rotated) against a nonlinear mix of the
    same factors; errors (negative margin) must be lower on the positive controls."""
    negative = control_scores["mixed"][name]
    for kind in controls.POSITIVE:
        value = control_scores[kind][name]
        assert (value - negative >= margin) if margin > 0 else (value - negative <= margin), (kind, value, negative)


def test_controls_decode_their_factors_and_refuse_unknown_kinds():
    x = np.random.default_rng(0).standard_normal((64, controls.ShapesControl.dim))
    for kind in controls.CONTROLS:
        control = controls.control_for(kind)
        f = control.factors_of(x)
        assert set(f) == set(shapes.FACTORS) and control.decode(x).shape == (64, 16, 16, 3)
        assert np.all((f["object_hue"] >= 0) & (f["object_hue"] < 0.25))
        assert np.all((f["background_hue"] >= 0.5) & (f["background_hue"] < 0.75))
    axes, rotated = controls.control_for("axes"), controls.control_for("rotated")
    q = rotated._matrices()[0]
    for name in shapes.FACTORS:  # the rotated control is the axis-aligned one in rotated coordinates
        np.testing.assert_allclose(rotated.factors_of(x @ q.T)[name], axes.factors_of(x)[name], atol=1e-9)
    with pytest.raises(ValueError, match="kind must be one of"):
        controls.control_for("tangled")


@pytest.fixture(scope="module")
def digit_control_scores():
    """The digits controls (prototype blends) read by a briefly trained digit classifier."""
    from isodiff_jax.analysis.networks import digit_classifier
    classifier = digit_classifier.train(16, steps=150, progress=False)
    reader = scoring.ClassReader(classifier, digit_classifier.CLASS_NAMES)
    return {kind: controls.control_for(kind, "digits").measure(reader, num_edit=16, num_probe=256)
            for kind in controls.CONTROLS}


@pytest.mark.slow  # the digits controls' fixture
@pytest.mark.parametrize("name,margin", [
    ("probe_class_accuracy", 0.3), ("pullback_monotone", 0.3), ("pullback_coverage", 0.5),
    ("pullback_additivity_error", -0.1)])
def test_the_digits_measures_score_both_positive_controls_above_the_negative(digit_control_scores, name, margin):
    negative = digit_control_scores["mixed"][name]
    for kind in controls.POSITIVE:
        value = digit_control_scores[kind][name]
        assert (value - negative >= margin) if margin > 0 else (value - negative <= margin), (kind, value, negative)


@pytest.mark.slow  # the digits controls' fixture
def test_class_purity_cannot_tell_the_digits_controls_apart(digit_control_scores):
    """A classifier moves probability from one class to one other whatever the latent, so the
    purity of class gains is high on the entangled control too: the study does not judge by it."""
    assert digit_control_scores["mixed"]["pullback_purity"] > 0.8
    assert all(digit_control_scores[kind]["pullback_purity"] > 0.8 for kind in controls.POSITIVE)


class _Independent(scoring.ClassReader):
    """A reader whose change is a function of the edited reading alone (independent of the
    original): each class probability of a flat Dirichlet (Beta(1, F − 1)) mapped to a standard
    normal, so that under chance every direction's dominant attribute is uniform and independent
    of the others' and each response's signs are fair coins."""

    def signed_change(self, before, after):
        from scipy.special import ndtri
        f = len(self.names)
        return {name: ndtri(1 - (1 - np.asarray(after[name])) ** (f - 1)) for name in self.names}

    def magnitude(self, signed):
        return {name: np.abs(v) for name, v in signed.items()}


def test_chance_levels_match_their_closed_forms_where_the_draws_are_independent():
    from isodiff_jax.analysis.edits import chance
    reader, k, draws = _Independent(None, [f"c{i}" for i in range(5)]), 3, 400
    levels = chance.pullback_chance(reader, samples=16, k=k, draws=draws)
    se = lambda key: levels[key][1] / np.sqrt(draws)
    assert abs(levels["coverage"][0] - 5 * (1 - 0.8 ** k)) < 4 * se("coverage")  # distinct of k uniform draws of 5
    # a response (x1, x2, 0, x3, x4) of symmetric i.i.d. changes rises with probability (1/8)², falls as often
    assert abs(levels["monotone"][0] - 2 / 64) < 4 * se("monotone")
    # |Δ(a+b) − Δ(a) − Δ(b)| of three i.i.d. normal changes has mean √3 √(2/π), |Δ(a)| + |Δ(b)| 2 √(2/π)
    assert abs(levels["additivity_error"][0] - np.sqrt(3) / 2) < 4 * se("additivity_error") + 0.01
    assert 1 / 5 < levels["purity"][0] < 1


def test_chance_levels_move_with_the_protocol_and_sit_below_a_perfect_edit():
    from isodiff_jax.analysis.edits import chance
    reader = scoring.FactorReader(None)
    few, many = (chance.pullback_chance(reader, samples=n, k=4, draws=60) for n in (4, 64))  # spreads ≈ 0.10, 0.03
    assert few["consistency"][1] > 2 * many["consistency"][1]  # fewer samples: a wider spread under chance
    for key in ("purity", "linearity", "monotone"):
        assert few[key][0] < 0.7  # a pure, linear, monotone edit scores 1
    supervised = chance.supervised_chance(reader, factors.CONTINUOUS, samples=16, draws=20)  # means 0.15, 0
    assert supervised["precision"][0] < 0.3 and supervised["monotone"][0] < 0.05
    digits = chance.pullback_chance(scoring.ClassReader(None, [str(i) for i in range(10)]), samples=8, k=4, draws=100)
    assert 1 <= digits["coverage"][0] <= 4
