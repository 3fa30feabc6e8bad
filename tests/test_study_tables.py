"""The disentanglement study's tables from run records (pure functions, no training): a metric
asked for and missing is an error, and the fine-tune runs are summarised beside the pairs."""
import types

import pytest
from support import load_module


@pytest.fixture(scope="module")
def study():
    return load_module("experiments/disentanglement.py")


def record(data: str, weight: float, seed: int, from_scratch: bool = True, **metrics) -> dict:
    name = f"{data}_{'scratch' if from_scratch else 'finetune'}_lam{weight:g}_seed{seed}"
    return {"data": data, "weight": weight, "seed": seed, "from_scratch": from_scratch, "name": name,
            "metrics": metrics}


def test_paired_is_the_arithmetic_of_the_records(study):
    runs = [record("shapes", 0.0, 0, probe_r2=0.2), record("shapes", 1.0, 0, probe_r2=0.5),
            record("shapes", 0.0, 1, probe_r2=0.4), record("shapes", 1.0, 1, probe_r2=0.5)]
    stats = study.paired(runs, "shapes", ["probe_r2"])["probe_r2"]
    assert stats["lambda0"] == pytest.approx(0.3) and stats["regularized"] == pytest.approx(0.5)
    assert stats["difference"] == pytest.approx(0.2) and stats["difference_se"] == pytest.approx(0.1)
    assert stats["seeds"] == 2 and stats["detectable"] == pytest.approx(16.33 * 0.1, rel=1e-3)
    assert "| probe_r2 | 0.3 ± 0.1 | 0.5 ± 0 | +0.2 ± 0.1 | 1.6 | 2 |" in study.table({"probe_r2": stats})


def test_a_metric_asked_for_and_missing_is_an_error_not_a_gap(study):
    runs = [record("shapes", 0.0, 0, probe_r2=0.2), record("shapes", 1.0, 0, probe_r2=0.5)]
    with pytest.raises(ValueError, match="shapes_scratch_lam0_seed0 has no 'pullback_xt_purity'"):
        study.paired(runs, "shapes", ["probe_r2", "pullback_xt_purity"])


def test_the_fine_tunes_pair_each_lambda_with_lambda_zero_over_seeds(study):
    """Known answers: per fine-tuned λ, the paired arithmetic of `paired` over the seeds that have
    both λ and λ = 0 (a scratch run and a seed without its λ = 0 fine-tune are left out)."""
    runs = [record("shapes", 0.0, 0, probe_r2=0.2),  # a scratch run: not a fine-tune
            record("shapes", 0.0, 0, False, probe_r2=0.4), record("shapes", 0.001, 0, False, probe_r2=0.5),
            record("shapes", 1.0, 0, False, probe_r2=0.7), record("shapes", 0.0, 1, False, probe_r2=0.6),
            record("shapes", 0.001, 1, False, probe_r2=0.5), record("shapes", 1.0, 1, False, probe_r2=1.1),
            record("shapes", 1.0, 2, False, probe_r2=9.0)]  # no λ = 0 at seed 2: unpaired
    stats = study.finetuned(runs, ["probe_r2"])
    assert list(stats) == ["lambda0.001", "lambda1"]
    small, large = stats["lambda0.001"]["probe_r2"], stats["lambda1"]["probe_r2"]
    assert small["lambda0"] == pytest.approx(0.5) and small["regularized"] == pytest.approx(0.5)
    assert small["difference"] == pytest.approx(0.0) and small["difference_se"] == pytest.approx(0.1)
    assert large["regularized"] == pytest.approx(0.9) and large["difference"] == pytest.approx(0.4)
    assert large["difference_se"] == pytest.approx(0.1) and large["seeds"] == 2
    table = study.finetune_table(stats)
    assert "λ = 0.001 against λ = 0:" in table and "| probe_r2 | 0.5 ± 0.1 | 0.9 ± 0.2 | +0.4 ± 0.1 | 1.6 | 2 |" in table
    assert study.finetuned(runs[:1] + runs[2:4], ["probe_r2"]) == {}  # no fine-tune at λ = 0: nothing to compare with


def test_the_gate_arm_pairs_its_runs_with_the_same_seeds_lambda_zero(study):
    """Known answers: --gate_seeds adds λ = --best_lambda gated at --gate_p (and the λ = 0 partner
    of a seed the key pair lacks); `paired` at p = 0 takes those runs and the shared λ = 0 runs,
    at the default p = 0.5 the key pair's, and a record without "p" (before the arm) is p = 0.5."""
    args = study.parser().parse_args(["--seeds", "0,1", "--digits_seeds", "", "--gate_seeds", "1,2"])
    assert [r.name for r in study.planned_runs(args)] == [
        "shapes_scratch_lam0_seed0", "shapes_scratch_lam1_seed0", "shapes_scratch_lam0_seed1",
        "shapes_scratch_lam1_seed1", "shapes_scratch_p0_lam1_seed1", "shapes_scratch_lam0_seed2",
        "shapes_scratch_p0_lam1_seed2"]
    config = study.run_config(study.Run("shapes", 1.0, 1, p=0.0), args)
    assert (config.regularizer.p, config.regularizer.weight, config.seed) == (0.0, 1.0, 1)
    gated = lambda seed, value: {**record("shapes", 1.0, seed, probe_r2=value), "p": 0.0}
    runs = [record("shapes", 0.0, 1, probe_r2=0.2), record("shapes", 1.0, 1, probe_r2=0.3), gated(1, 0.6),
            record("shapes", 0.0, 2, probe_r2=0.4), gated(2, 0.6)]
    gate = study.paired(runs, "shapes", ["probe_r2"], p=0.0)["probe_r2"]
    assert gate["seeds"] == 2 and gate["difference"] == pytest.approx(0.3) and gate["difference_se"] == pytest.approx(0.1)
    key = study.paired(runs, "shapes", ["probe_r2"])["probe_r2"]
    assert key["seeds"] == 1 and key["difference"] == pytest.approx(0.1)
    with pytest.raises(SystemExit):
        study.parser().parse_args(["--gate_p", "1"])


def test_the_fine_tunes_use_the_papers_optimiser_and_their_own_length(study):
    args = study.parser().parse_args(["--finetune", "--base", "/base", "--finetune_steps", "300", "--seeds", "0"])
    runs = study.planned_runs(args)
    tuned = [r for r in runs if not r.from_scratch]
    assert [(r.weight, r.seed) for r in tuned] == [(w, s) for s in (0, 1, 2) for w in (0.0, 0.001, 1.0)]
    c = study.run_config(tuned[4], args)
    assert (c.training.init_from, c.training.num_steps, c.seed, c.regularizer.weight) == ("/base", 300, 1, 0.001)
    assert (c.optim.lr, c.optim.decay, c.optim.warmup_steps) == (1e-5, "constant", 0)
    assert (c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm, c.optim.ema_max_decay) == (
        0.95, 0.999, 1e-6, 1.0, 0.9999)
    scratch = study.run_config(runs[1], args)
    assert (scratch.training.init_from, scratch.training.num_steps, scratch.optim.b1) == ("", 1000, 0.9)


def test_a_measure_whose_models_read_outside_its_controls_cannot_judge(study):
    """Known answers: the controls span each mean ± 2 spreads; consistency's models (0.47, 0.56)
    lie below that range and cannot judge, purity's lie inside, and fd_oracle has no control."""
    kinds = ("axes", "rotated", "mixed")
    means = {"pullback_consistency": (0.9, 0.85, 0.7), "pullback_purity": (0.8, 0.75, 0.4)}
    controls = {"shapes": {k: {key: v[i] for key, v in means.items()} for i, k in enumerate(kinds)},
                "spread": {"shapes": {k: {key: 0.01 for key in means} for k in kinds}}}
    stats = {"pullback_xt_consistency": {"lambda0": 0.56, "regularized": 0.47, "detectable": 0.1, "seeds": 3},
             "pullback_h_purity": {"lambda0": 0.5, "regularized": 0.6, "detectable": 0.5, "seeds": 3},
             "fd_oracle": {"lambda0": 30, "regularized": 31}}
    verdicts = study.judges(stats, controls, "shapes")
    assert set(verdicts) == {"pullback_xt_consistency", "pullback_h_purity"}
    assert verdicts["pullback_xt_consistency"]["controls"] == pytest.approx([0.68, 0.92])
    assert verdicts["pullback_xt_consistency"]["models"] == pytest.approx([0.47, 0.56])
    assert not verdicts["pullback_xt_consistency"]["judges"] and verdicts["pullback_h_purity"]["judges"]
    assert study.judges_lines(verdicts) == ("cannot judge pullback_xt_consistency: the models read 0.47–0.56, "
                                           "outside the 0.68–0.92 its controls span")
    # purity's control gap is min(0.8 − 0.4, 0.75 − 0.4) = 0.35: 3 seeds that detect only 0.5 do not resolve it
    assert verdicts["pullback_h_purity"]["control_gap"] == pytest.approx(0.35)
    assert not verdicts["pullback_h_purity"]["resolves"] and verdicts["pullback_xt_consistency"]["resolves"]
    assert study.judges_lines(verdicts, stats).splitlines()[1] == (
        "unresolved pullback_h_purity: 3 seeds detect differences of 0.5 or more, its control gap is 0.35")
    one_seed = {name: dict(v, seeds=1, detectable=float("nan")) for name, v in stats.items()}
    assert study.judges_lines(study.judges(one_seed, controls, "shapes"), one_seed).splitlines()[1] == (
        "unresolved pullback_h_purity: one seed, no paired test, its control gap is 0.35")
    assert study.control_key("shapes", "linear_h_additivity_error") == "supervised_additivity_error"
    assert study.control_key("digits", "linear_h_precision") is None  # digits has no supervised edits


def test_the_tables_ask_only_for_names_the_registry_declares(study):
    """Every name of each table is among the values its registry entries declare for the study's
    options (full and quick), with the derived means of `with_means`."""
    from isodiff_jax.analysis import registry
    from configs import test as test_config
    from isodiff_jax import config as config_lib
    for quick in (False, True):
        options = study.options(quick)
        for data in ("shapes", "digits"):
            config = test_config.get_config()
            config.data.name, config.diffusion.num_timesteps = data, 1000
            network = types.SimpleNamespace(features=None, probabilities=None, shape_probabilities=None)  # names only
            context = registry.Context(config_lib.model_spec(config), options, registry.Resources(
                oracle=network if data == "shapes" else None, classifier=network if data == "digits" else None))
            declared = [n for m in study.METRICS[data] for n in registry.REGISTRY[m].names(context)]
            available = study.with_means(dict.fromkeys(declared, 0.0))
            assert set(study.table_names(data, options, continuous=True)) <= set(available), (data, quick)
            for name in study.table_names(data, options, continuous=True):  # the shapes view's have controls
                if "continuous" in name:
                    assert study.control_key(data, name) in study.CONTROL_KEYS[data], name


@pytest.mark.parametrize("seeds, expected", [(3, 5.653), (5, 3.761), (10, 3.150)])
def test_the_detectable_effect_has_the_power_it_claims(seeds, expected):
    """A true difference of detectable_in_se(n) standard errors is found by a two-sided paired
    t-test at 5 % in 80 % of simulated studies of n seeds."""
    import numpy as np
    from scipy import stats
    from experiments import common
    nc = common.detectable_in_se(seeds)
    assert nc == pytest.approx(expected, abs=1e-3)
    rng = np.random.default_rng(seeds)
    d = rng.normal(nc / np.sqrt(seeds), 1.0, size=(40000, seeds))  # differences of unit std: SE = 1/sqrt(n)
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(seeds))
    power = np.mean(np.abs(t) > stats.t.ppf(0.975, seeds - 1))
    assert power == pytest.approx(0.8, abs=0.01)
    assert common.detectable_in_se(1) == float("inf")


def test_records_measured_under_another_protocol_are_refused(study):
    wanted = study.protocol(study.options(False))
    assert wanted["pullback_samples"] == 8 and wanted["pullback_alphas"] == [-2.0, -1.0, 1.0, 2.0]
    same = dict(record("shapes", 0.0, 0, probe_r2=0.2), protocol=wanted)
    study.check_protocol([same], wanted)
    other = dict(record("shapes", 1.0, 0, probe_r2=0.5), protocol=dict(wanted, pullback_samples=64))
    with pytest.raises(ValueError, match="shapes_scratch_lam1_seed0 was measured under the protocol .*'pullback_samples': 64"):
        study.check_protocol([same, other], wanted)
    with pytest.raises(ValueError, match="protocol None"):  # measured before protocols were recorded
        study.check_protocol([record("shapes", 0.0, 1, probe_r2=0.2)], wanted)
    assert study.protocol(study.options(True)) != wanted  # the quick test's protocol is its own


def test_control_gaps_are_in_standard_errors_of_one_measurement_each(study):
    controls = {"shapes": {"axes": {"m": 0.9}, "rotated": {"m": 0.5}, "mixed": {"m": 0.3}},
                "spread": {"shapes": {"axes": {"m": 0.03}, "rotated": {"m": 0.0}, "mixed": {"m": 0.04}}}}
    axes, rotated = study.control_gaps(controls, "shapes", "m")
    assert axes == pytest.approx(0.6 / 0.05) and rotated == pytest.approx(0.2 / 0.04)
    controls["spread"]["shapes"]["mixed"]["m"] = 0.0
    assert study.control_gaps(controls, "shapes", "m")[1] == float("inf")  # no spread at all: any gap is certain


def test_the_control_seeds_flag_refuses_zero(study, capsys):
    with pytest.raises(SystemExit):
        study.parser().parse_args(["--control_seeds", "0"])
    assert "'0' is not a whole number >= 1" in capsys.readouterr().err
