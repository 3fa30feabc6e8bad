"""Loading a training workdir for analysis (spec, EMA or raw parameters), evaluators built once,
and the analysis command."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax.analysis import load, suite
from isodiff_jax.analysis.options import Options


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


def test_loads_newest_ema_parameters_by_default(workdir):
    spec, params, step = load.load(workdir)
    raw = load.load(workdir, ema=False).params
    assert step == 4 and spec.image_shape == (16, 16, 3)
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(raw))
    assert any(not np.array_equal(a, b) for a, b in leaves)  # EMA differs from the raw parameters
    x = jnp.zeros((2, 16, 16, 3))
    t = jnp.array([10, 90], jnp.int32)
    assert spec.eps(params, x, t).shape == (2, 16, 16, 3)
    assert spec.encode(params, x, t).shape == (2, 8, 8, 32)


def test_loads_a_given_step_on_one_device_without_the_optimizer_state(workdir):
    spec, params, step = load.load(workdir, step=2, devices=jax.devices()[:1])
    assert step == 2 and set(params) == {"params"}
    assert jax.tree.structure(params) == jax.tree.structure(spec.abstract_params())
    assert all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(params))
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
        load.load(workdir, step=3)


def test_training_ran_the_configured_evaluators(workdir):
    import json
    lines = [json.loads(line) for line in open(f"{workdir}/evaluation.jsonl")]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert line["mrtl"] >= 1.0 and line["mrtl"] == line["mrtl_t50"]
        assert -10 < line["probe_r2"] <= 1 and 0 <= line["probe_shape_accuracy"] <= 1
    # the evaluators saw the (sharded) EMA parameters of their step: the checkpoint's, evaluated again
    spec, params, _ = load.load(workdir, step=2, devices=jax.devices()[:1])
    options = Options(num_pairs=4, sample_steps=4, timesteps=(50,), seed=0)
    again = dict(suite.Suite(spec, ["mrtl"], options).run(params))
    assert again["mrtl"] == pytest.approx(lines[0]["mrtl"], rel=1e-5)


def test_a_second_evaluation_on_new_parameters_compiles_nothing(workdir, count_compiles):
    spec, params_2, _ = load.load(workdir, step=2)
    params_4 = load.load(workdir, step=4).params
    # the options of the CLI test below, whose programs then come from the persistent cache
    options = Options(num_pairs=4, num_samples=8, sample_steps=4, timesteps=(50, 90), pool=2)
    evaluators = suite.Suite(spec, ["mrtl", "mcn", "ppl", "inversion", "probe"], options)
    pictures = suite.Interpolation(spec, options)
    first = dict(itertools.chain(evaluators.run(params_2), pictures.run(params_2)))
    with count_compiles() as counter:
        second = dict(itertools.chain(evaluators.run(params_4), pictures.run(params_4)))
    assert counter.count == 0
    assert second.keys() == first.keys() and second["mrtl"] != first["mrtl"]
    assert second["t50_mcn"] != first["t50_mcn"] and second["probe_r2"] != first["probe_r2"]


def test_mcn_at_pure_noise_as_the_original_code_measures(workdir):
    spec, params, _ = load.load(workdir)
    options = Options(num_samples=8, timesteps=(50,), pool=2)
    values = {mode: dict(suite.Suite(spec, ["mcn"], dataclasses.replace(options, mcn_input=mode)).run(params))
              for mode in ("noised_data", "noise")}
    assert all(v["t50_mcn"] >= 1 and v["t50_mcn_is_lower_bound"] in (0.0, 1.0) for v in values.values())
    assert values["noise"]["t50_mcn"] != values["noised_data"]["t50_mcn"]
    with pytest.raises(ValueError, match="mcn_input"):
        Options(mcn_input="gaussian")


def test_not_a_workdir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        load.load(str(tmp_path))


def test_cli_writes_metrics_and_pictures_and_compares(workdir, tmp_path):
    import json
    import shutil
    from isodiff_jax.analysis import cli
    other = tmp_path / "other_run"
    shutil.copytree(workdir, other)
    options = ["--num_pairs", "4", "--num_samples", "8", "--timesteps", "50,90", "--sample_steps", "4", "--pool", "2"]
    cli.main(["--workdir", workdir, "--out", str(tmp_path / "one"), *options])
    report = json.load(open(tmp_path / "one" / "metrics.json"))
    m = report["metrics"]
    assert report["step"] == 4 and m["mrtl"] >= 1.0 and m["t50_mcn"] >= 1.0 and m["t90_vor"] >= 0
    assert m["ppl_pixel_l2"] > 0 and np.isfinite(m["inversion_psnr"])
    for name in ("interpolation.png", "rtl_histogram.png", "spectra.png", "inversion.png"):
        assert (tmp_path / "one" / name).stat().st_size > 1000, name
    cli.main(["--compare", workdir, str(other), "--out", str(tmp_path / "cmp"), "--metrics", "mrtl", *options])
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| metric |" in table and "mrtl_t90" in table and "other_run" in table
    assert (tmp_path / "cmp" / "interpolation_side_by_side.png").exists()
    with pytest.raises(ValueError, match="unknown metrics"):
        cli.main(["--workdir", workdir, "--out", str(tmp_path / "bad"), "--metrics", "fid"])
