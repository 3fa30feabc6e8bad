"""The registry of measures: every entry measures exactly the names it declares, and a second
measurement on new parameters of the same model compiles nothing; a metric that cannot run
says why in one line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_params

from configs import test as test_config
from isodiff_jax import config as config_lib
from isodiff_jax.analysis import registry, suite
from isodiff_jax.analysis.options import Options
from isodiff_jax.analysis.registry import REGISTRY, Resources

pytestmark = pytest.mark.slow  # every evaluator of the library compiled, on two data sets

# every option as small as the tiny model allows (the study's --quick settings)
OPTIONS = Options(num_pairs=2, timesteps=(50,), num_samples=8, num_fd_samples=8, sample_steps=4, fd_sample_steps=4,
                  spectrum_iters=8, num_label=16, num_edit=2, h_min_t=50, rank_iso_samples=1,
                  pullback_timesteps=(50,), pullback_k=2, pullback_samples=2, pullback_iters=8, probe_scans=96)


def tiny_spec(data: str):
    config = test_config.get_config()
    config.data.name = data
    return config_lib.model_spec(config)


def untrained_classifier():
    """The digit classifier's network at its initial weights: enough to read images."""
    from isodiff_jax.analysis.networks import digit_classifier
    net = digit_classifier.ClassifierNet()
    return digit_classifier.Classifier(net, net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))), 16)


def some_params(spec, seed: int):
    """Parameters with no leaf zero (the output layer too, so the samples depend on them)."""
    return jax.tree.map(jnp.asarray, random_params(spec.abstract_params(), seed))


def runnable(data: str, resources: Resources) -> list:
    return [m for m in registry.METRICS if registry.missing(m, data, resources.given()) is None]


@pytest.fixture(scope="module")
def resources(oracle16):
    return Resources(oracle=oracle16, classifier=untrained_classifier())


def test_the_two_data_sets_reach_every_entry(resources):
    assert set(runnable("shapes", resources)) | set(runnable("digits", resources)) == set(REGISTRY)


@pytest.mark.parametrize("data", ["shapes", "digits"])
def test_every_entry_measures_exactly_its_names_and_compiles_once(data, resources, count_compiles):
    spec = tiny_spec(data)
    metrics = runnable(data, resources)
    measures = suite.Suite(spec, metrics, OPTIONS, resources)
    context = registry.Context(spec, OPTIONS, resources)
    first_params, second_params = (some_params(spec, seed) for seed in (1, 2))
    first = {}
    for metric, evaluator in measures.evaluators.items():
        declared = REGISTRY[metric].names(context)
        measured = evaluator.measure(first_params)
        assert len(set(declared)) == len(declared), metric
        assert sorted(measured.values) == sorted(declared), metric
        assert all(isinstance(v, float) for v in measured.values.values())
        assert not set(measured.pictures) & set(declared)
        first.update(measured.values)
    assert sorted(first) == sorted(measures.names)
    with count_compiles() as counter:
        second = measures.measure(second_params).values
    assert counter.count == 0
    assert second.keys() == first.keys()
    assert second["mrtl"] != first["mrtl"] and second["rank_iso_t50"] != first["rank_iso_t50"]


@pytest.mark.parametrize("metric, data, given, reason", [
    ("probe", "digits", {"oracle"}, "probe needs the shapes data set's ground-truth factors (this run used 'digits')"),
    ("class_probe", "shapes", set(), "class_probe needs the digits data set's class labels"),
    ("edit", "shapes", set(), "edit needs the factor oracle (--oracle DIR)"),
    ("fd", "cifar10", {"oracle"}, "fd needs Inception-v3 weights (--inception FILE)"),
    ("fd", "digits", set(), "fd needs Inception-v3 weights (--inception FILE) or the digit classifier "
                            "(--classifier DIR)"),
    ("pullback", "shapes", {"classifier"}, "pullback needs the factor oracle (--oracle DIR)"),
    ("pullback", "cifar10", {"oracle"}, "pullback needs a data set whose edits a network reads"),
])
def test_a_metric_that_cannot_run_says_why(metric, data, given, reason):
    assert registry.missing(metric, data, given).startswith(reason)


def test_options_that_do_not_fit_the_model_are_named():
    spec = tiny_spec("shapes")  # T = 100
    found = registry.option_problems(Options(timesteps=(50,), sample_steps=4, pullback_timesteps=(60, 150)),
                                     spec, ["pullback", "mrtl"])
    assert any("pullback_timesteps=60,150 is invalid for a model of T = 100" in f for f in found)
    assert any("pullback_timesteps [60, 150] are not DDIM timesteps of sample_steps=4" in f for f in found)
    assert registry.option_problems(OPTIONS, spec, list(REGISTRY)) == []


def test_the_registry_builds_what_the_study_built_by_hand(resources):
    """The disentanglement study's shapes measures, built by hand from the library's evaluators as
    the study did before the registry (same settings), give exactly the registry's values."""
    from isodiff_jax.analysis import sampling
    from isodiff_jax.analysis.edits import pullback, scoring, supervised
    from isodiff_jax.analysis.measures import probe, rank_iso, rtl
    spec, o = tiny_spec("shapes"), OPTIONS
    params = some_params(spec, 1)
    reader = scoring.FactorReader(resources.oracle)
    by_hand = [
        rtl.Mrtl(spec.encode, image_shape=spec.image_shape, timesteps=o.timesteps, num_pairs=o.num_pairs, seed=o.seed),
        probe.LinearProbe(spec.encode, spec.noise_schedule, resolution=spec.data.resolution, timesteps=o.timesteps,
                          pool=o.pool, seed=o.seed, to_x0=spec.to_x0),
        rank_iso.ExactRankIso(spec, o.timesteps, sampling.real_images(spec, 1, 11)),
        supervised.SupervisedEdits(spec, reader, num_label=o.num_label, num_edit=o.num_edit,
                                   sample_steps=o.sample_steps, h_min_t=o.h_min_t),
        pullback.PullbackEditing(spec, reader, timesteps=(50,), k=2, num_samples=2, alphas=(-2.0, -1.0, 1.0, 2.0),
                                 sample_steps=o.sample_steps, num_iters=8)]
    expected = {name: value for evaluator in by_hand for name, value in evaluator.run(params)}
    got = suite.Suite(spec, ["mrtl", "probe", "rank_iso", "linearity", "pullback"], o, resources).measure(params)
    assert got.values.keys() == expected.keys()
    np.testing.assert_array_equal([got.values[k] for k in expected], list(expected.values()))
