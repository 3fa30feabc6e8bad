"""Does isometric regularization make the latent space more disentangled?

Every measure is first run on controls whose answer is known (`analysis/edits/controls.py`: factors on
axes, rotated, and a nonlinear mix), at --control_seeds latent draws and beside its chance level
(`analysis/edits/chance.py`), then on trained models, all under one measuring protocol (`protocol`:
samples, directions, α grids, timesteps) recorded in every JSON; results measured under another are
refused:

- shapes, from scratch for --steps (the λ study's scratch pair): λ = 0 against --best_lambda
  (the λ study's best, 1), for every seed of --seeds, so each difference has a standard error;
- digits (scikit-learn's real scans, configs/digits16.py), the same pair for --digits_seeds;
- with --gate_seeds, the loss where the factors are visible: --best_lambda from scratch with the
  regularizer's gate at p = --gate_p (0: at every t; the pair's p = 0.5 regularizes only
  t ≥ 500, where at 16 px the probes read no factor), paired with the same seeds' λ = 0 runs,
  which no gate touches;
- with --finetune, the paper's protocol: the base model (experiments/base_model.py) fine-tuned
  for --finetune_steps with the paper's optimiser (AdamW lr 1e-5 constant, β = (0.95, 0.999),
  weight decay 1e-6, clipping at 1, EMA 0.9999; method.md §4) at each of --finetune_lambdas
  (0, the paper's 1e-3, and 1) for every seed of --finetune_seeds, each λ paired with λ = 0.

Each model gets: geometry (exact rank·L_iso, mRTL / floor, the top singular values of the
encoder), quality (fd_oracle and the confident share on 256 samples; on digits the digit
classifier's), the linear probes from h, the supervised edits' precision, linearity and
composition in x_T and h (shapes), and the purity, consistency, coverage,
linearity and composition of the top-4 pullback directions at t = 500 and 900 (on digits their
class purity). Seeds share compiled programs: evaluators are built for the spec with data seed 0.

    .venv/bin/python -m experiments.disentanglement                 # about 3 hours on 2 CPU cores
    .venv/bin/python -m experiments.disentanglement --train_only    # the training alone

Resumable: runs train in runs/experiments/disentanglement/<name>/ (resumed if interrupted); each
run's measurements go to --results/<name>.json and are not recomputed; the controls to
controls.json. Writes --results/summary.json (per metric: mean ± standard error over seeds of
λ = 0, of the regularized runs and of their paired difference, and whether the models read within
the range the measure's controls span: `judges`), the pullback pictures and the linearity curves
under --pictures, and prints the tables.
"""
import argparse
import dataclasses
import glob
import math
import os
import time

import numpy as np

from experiments import common
from isodiff_jax.storage import read_saved, write_json, write_results



@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model of the study: data set, regularizer weight λ (sphere loss, gated at
    t ≥ p T), seed (initialisation, data order and every step's randomness), from scratch or
    fine-tuned from the λ study's base model."""
    data: str
    weight: float
    seed: int
    from_scratch: bool = True
    p: float = 0.5

    @property
    def name(self) -> str:
        start = "scratch" if self.from_scratch else "finetune"
        gate = "" if self.p == 0.5 else f"_p{self.p:g}"
        return f"{self.data}_{start}{gate}_lam{self.weight:g}_seed{self.seed}"


# The paper's fine-tuning optimiser (method.md §4); its learning rate is --finetune_lr.
PAPER_FINETUNE = dict(b1=0.95, b2=0.999, weight_decay=1e-6, clip_norm=1.0, ema_max_decay=0.9999, ema_power=0.75)


def steps_of(run: Run, args) -> int:
    return args.steps if run.from_scratch else args.finetune_steps


def run_config(run: Run, args):
    """The λ study's recipe for this run (--config, configs/shapes16.py) on the run's data set and
    seed: from scratch, its schedule for --steps (seed 0 on shapes is the λ study's own
    scratch_lam{λ} run; on digits it is configs/digits16.py); a fine-tune starts from --base's EMA
    parameters with the paper's optimiser for --finetune_steps, the seed drawing its data order
    and every step's randomness."""
    study_args = argparse.Namespace(config=args.config, steps=steps_of(run, args), checkpoint_every=250,
                                    grid_steps=100, quick=args.quick, lr=args.finetune_lr, base=args.base)
    c = common.run_config(common.Run(run.name, run.weight, run.p, from_scratch=run.from_scratch),
                                study_args)
    c.seed, c.data.name = run.seed, run.data
    if not run.from_scratch:
        for field, value in PAPER_FINETUNE.items():
            c.optim[field] = value
    return c


def check_base(base: str) -> None:
    """Refuses a base model that has not reached the steps its config plans (a fine-tune of a
    model still training would start from whatever its newest checkpoint holds)."""
    from isodiff_jax import checkpoint
    from isodiff_jax import config as config_lib
    planned = config_lib.from_json(checkpoint.saved_config_json(base)).training.num_steps
    reached = max(checkpoint.all_steps(base), default=0)
    if reached < planned:
        raise SystemExit(f"error: the base model in {base} has reached step {reached} of {planned}: finish it first "
                         f"(python -m experiments.base_model resumes it), then fine-tune")


def train(run: Run, args) -> str:
    """Trains (or resumes, or finds finished) one run; returns its workdir."""
    if not run.from_scratch:
        check_base(args.base)
    workdir = os.path.join(args.out, run.name)
    common.train(run_config(run, args), workdir)
    return workdir


def canonical(spec):
    """The spec with the data seed set to 0, so that whichever seed is measured first, the
    evaluators' real images are the same draws for every seed (specs of different seeds compare
    equal anyway: they compile the same programs)."""
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, seed=0))


def options(quick: bool):
    from isodiff_jax.analysis.options import Options
    if quick:
        return Options(num_pairs=4, timesteps=(50,), num_samples=8, num_fd_samples=8, sample_steps=2,
                       fd_sample_steps=2, spectrum_method="matrix_free", spectrum_iters=4, num_label=32,
                       num_edit=4, h_min_t=50, rank_iso_samples=1, pullback_timesteps=(50,), pullback_k=2,
                       pullback_samples=4, pullback_iters=4, probe_scans=96)
    # pullback at t = 500 and 900 (each costs ~2 min per model on 2 cores)
    return Options(num_pairs=32, timesteps=(500, 700, 900), num_samples=32, num_fd_samples=256, sample_steps=20,
                   fd_sample_steps=100, fd_sample_eta=1.0, num_label=128, num_edit=16, rank_iso_samples=4,
                   pullback_timesteps=(500, 900), pullback_k=4, pullback_samples=8)


METRICS = {"shapes": ("mrtl", "fd", "probe", "rank_iso", "linearity", "pullback"),  # names of analysis.registry
           "digits": ("mrtl", "fd", "class_probe", "rank_iso", "pullback")}


class Measurer:
    """The registry's evaluators of the study for one model (the canonical spec), built once."""

    def __init__(self, spec, args):
        from isodiff_jax.analysis import registry, suite
        data = spec.data.name
        resources = registry.load_resources(oracle_dir=args.oracle if data == "shapes" else "",
                                            classifier_dir=args.classifier if data == "digits" else "")
        self.spec = spec
        self.suite = suite.Suite(spec, METRICS[data], options(args.quick), resources)
        asked = set(table_names(data, self.suite.options, continuous=True)) - set(with_means(dict.fromkeys(self.suite.names, 0.0)))
        if asked:
            raise ValueError(f"the {data} table asks for {sorted(asked)}, which {METRICS[data]} do not measure")

    def measure(self, workdir: str) -> dict:
        from isodiff_jax.analysis import load
        spec, params, step = load.load(workdir)
        if spec != self.spec or spec.data.dataset != self.spec.data.dataset:
            raise ValueError(f"{workdir} holds another model or data set than the measurer's: {spec}")
        measured = self.suite.measure(params)
        strips = measured.pictures["pullback_strips"]
        np.savez_compressed(os.path.join(workdir, "pullback_strips.npz"), **{f"t{t}": v for t, v in strips.items()})
        curves = {k: v for k, v in measured.pictures.items() if k.startswith("linear_") and k.endswith("_response")}
        return {"step": step, "metrics": {**measured.values, **curves}}  # the curves draw linearity_curves.png


def measured(run: Run, args, measurers: dict) -> dict:
    """Trains (or resumes) and measures one run unless its record exists in --results; with
    --measure_only, None for a run not trained to --steps (another process may be training it)."""
    from isodiff_jax import checkpoint
    path = os.path.join(args.results, f"{run.name}.json")
    if (saved := read_saved(path)) is not None:
        return saved
    started = time.perf_counter()
    if args.measure_only:
        workdir = os.path.join(args.out, run.name)
        if not os.path.isdir(os.path.join(workdir, "checkpoints", str(steps_of(run, args)))):
            return None  # not trained to the end yet
    else:
        workdir = train(run, args)
    spec = canonical(checkpoint.read_spec(workdir)[0])
    key = (spec, spec.data.dataset)  # specs compare what compiles; the data set picks oracle or classifier
    if key not in measurers:
        measurers[key] = Measurer(spec, args)
    result = {**dataclasses.asdict(run), "name": run.name, "protocol": protocol(options(args.quick)),
              "reader": reader_record(run.data, args), **measurers[key].measure(workdir),
              "seconds": time.perf_counter() - started}
    write_json(path, result, indent=2)
    return result


def reader_record(data: str, args) -> dict:
    """Which network read the run's images (the oracle for shapes, the classifier for digits) and
    its held-out scores: each session that retrains one gets a slightly different network, and a
    record says which one measured it (levels compare across readers only approximately; a
    pair's paired differences share one)."""
    directory, name = (args.oracle, "oracle.json") if data == "shapes" else (args.classifier, "classifier.json")
    saved = read_saved(os.path.join(directory, name)) or {}
    return {"path": os.path.abspath(directory), "held_out": saved.get("held_out", {})}


def trained(run: Run, args) -> bool:
    """Whether `run` is measured already, or trained to --steps."""
    return os.path.exists(os.path.join(args.results, f"{run.name}.json")) or \
        os.path.isdir(os.path.join(args.out, run.name, "checkpoints", str(steps_of(run, args))))


def protocol(o) -> dict:
    """How edits are measured, on the controls and on the models alike (recorded with every
    result; the study compares results measured under one protocol only): the pullback
    directions' samples, number, α grid and timesteps, and the supervised edits' labelled and
    edited samples and α grid."""
    from isodiff_jax.analysis.edits import pullback, scoring
    return {"pullback_samples": o.pullback_samples, "pullback_k": o.pullback_k, "pullback_alphas": list(pullback.ALPHAS),
            "pullback_timesteps": list(o.pullback_timesteps), "supervised_num_label": o.num_label,
            "supervised_num_edit": o.num_edit, "supervised_alphas": list(scoring.ALPHAS)}


def check_protocol(results: list, expected: dict) -> None:
    """Refuses run records measured under another protocol than `expected` (or before protocols
    were recorded): their numbers do not compare with the controls'."""
    for r in results:
        if r.get("protocol") != expected:
            raise ValueError(f"{r['name']} was measured under the protocol {r.get('protocol')}, not the study's "
                             f"{expected}: its numbers do not compare with the controls'; delete its record in "
                             f"--results to measure it again")


# What the control measures score, recorded in controls.json: a saved file without the current
# scores is measured again (2: the shapes scores through the continuous view as well).
CONTROL_SCORES = 2


def control_results(args) -> dict:
    """Every measure on the three controls of each data set under the study's protocol, read by
    the oracle (shapes) and the digit classifier (digits), at --control_seeds latent draws: the
    mean ("shapes", "digits"), the spread of one measurement ("spread": the standard deviation
    over draws) and the chance level of each edit score ("chance": mean and standard deviation of
    edits read as unrelated images, `chance`). In controls.json of --results; measured again when
    the saved one has another protocol, number of draws or set of scores (CONTROL_SCORES)."""
    o = options(args.quick)
    path, wanted = os.path.join(args.results, "controls.json"), protocol(o)
    saved = read_saved(path)
    if (saved is not None and saved.get("protocol") == wanted and saved.get("seeds") == args.control_seeds
            and saved.get("scores") == CONTROL_SCORES):
        return saved
    from isodiff_jax.analysis.edits import chance, controls, factors, pullback, scoring
    from isodiff_jax.analysis.networks import digit_classifier, oracle
    readers = {"shapes": scoring.FactorReader(oracle.load(args.oracle)),
               "digits": scoring.ClassReader(digit_classifier.load(args.classifier), digit_classifier.CLASS_NAMES)}
    edits = dict(num_edit=o.num_edit, pullback_samples=o.pullback_samples, pullback_k=o.pullback_k,
                 pullback_alphas=pullback.ALPHAS, **(dict(num_probe=128) if args.quick else {}))
    sizes = {"shapes": dict(edits, num_label=o.num_label), "digits": edits}
    result = {"protocol": wanted, "seeds": args.control_seeds, "scores": CONTROL_SCORES, "spread": {}, "chance": {}}
    for data, reader in readers.items():
        resolution = dict(resolution=reader.oracle.resolution) if data == "shapes" else {}
        draws = {kind: [controls.control_for(kind, data, **resolution).measure(reader, **sizes[data], seed=seed)
                        for seed in range(args.control_seeds)] for kind in controls.CONTROLS}
        result[data] = {kind: {k: float(np.mean([d[k] for d in v])) for k in v[0]} for kind, v in draws.items()}
        result["spread"][data] = {kind: {k: float(np.std([d[k] for d in v], ddof=1)) if len(v) > 1 else float("nan")
                                         for k in v[0]} for kind, v in draws.items()}
        levels = {f"pullback_{k}": v for k, v in chance.pullback_chance(
            reader, samples=o.pullback_samples, k=o.pullback_k, draws=100 if args.quick else 1000).items()}
        if data == "shapes":
            levels |= {f"supervised_{k}": v for k, v in chance.supervised_chance(
                reader, factors.CONTINUOUS, samples=o.num_edit, draws=20 if args.quick else 200).items()}
        result["chance"][data] = levels
    write_json(path, result, indent=2)
    return result


def with_means(metrics: dict) -> dict:
    """metrics plus linear_{xT,h}_target_change, the mean over factors of how far each supervised
    edit moved its factor (an edit that moves nothing is trivially linear and additive)."""
    from isodiff_jax.analysis.edits import factors
    out = dict(metrics)
    for space in ("xT", "h"):
        values = [metrics.get(f"linear_{space}_{name}_target_change") for name in factors.CONTINUOUS]
        if all(v is not None for v in values):
            out[f"linear_{space}_target_change"] = float(np.mean(values))
    return out


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def _value(result: dict, name: str) -> float:
    metrics = with_means(result["metrics"])
    if name not in metrics:
        raise ValueError(f"{result['name']} has no {name!r}: the table asks for a metric its record lacks "
                         f"(measured by an older version? delete its record to measure it again)")
    return metrics[name]


def paired(results: list, data: str, names, *, from_scratch: bool = True, weight: float | None = None,
           p: float = 0.5) -> dict:
    """Per metric of `names`: mean ± standard error over seeds of λ = 0, of the regularized runs
    (λ = `weight`; None: the one λ > 0 there is; gated at `p`), and of their paired difference
    (regularized − λ = 0, same seed), with the number of seeds and the smallest difference those
    seeds detect (`common.detectable_in_se` × its SE; NaN with one seed), over the runs from
    scratch or the fine-tunes. A name that a run's record lacks is an error, not a silent gap."""
    wanted = lambda r: (r["data"] == data and r["from_scratch"] == from_scratch
                        and (r["weight"] == 0 or ((weight is None or r["weight"] == weight)
                                                  and r.get("p", 0.5) == p)))  # records before the gate arm: 0.5
    by_seed = {}
    for r in filter(wanted, results):
        by_seed.setdefault(r["seed"], {})["zero" if r["weight"] == 0 else "reg"] = r
    pairs = [v for v in by_seed.values() if len(v) == 2]
    out = {}
    for name in names if pairs else ():
        zero = np.array([_value(p["zero"], name) for p in pairs])
        reg = np.array([_value(p["reg"], name) for p in pairs])
        (m0, se0), (mr, ser), (md, sed) = _mean_se(zero), _mean_se(reg), _mean_se(reg - zero)
        out[name] = {"lambda0": m0, "lambda0_se": se0, "regularized": mr, "regularized_se": ser,
                     "difference": md, "difference_se": sed, "seeds": len(pairs),
                     "detectable": common.detectable_in_se(len(pairs)) * sed}  # at 80 % power, 5 % two-sided
    return out


def finetuned(results: list, names) -> dict:
    """The fine-tunes of the base model (shapes): {f"lambda{λ:g}": `paired` over the seeds that
    have both λ and λ = 0} for each fine-tuned λ > 0 with at least one such seed."""
    weights = sorted({r["weight"] for r in results if not r["from_scratch"] and r["weight"] > 0})
    stats = {f"lambda{w:g}": paired(results, "shapes", names, from_scratch=False, weight=w) for w in weights}
    return {key: value for key, value in stats.items() if value}


def table_names(data: str, o, continuous: bool = False) -> tuple[str, ...]:
    """The metrics each table shows, as the registry names them for options `o`; with
    `continuous`, the shapes tables also show the continuous view's scores (CONTINUOUS_KEYS),
    which only records measured since scores version 2 hold (the fine-tunes and the gated arm)."""
    t, k = o.pullback_timesteps[0], o.pullback_k
    geometry = (*(f"rank_iso_t{s}" for s in o.timesteps), "mrtl_over_floor", f"pullback_xt_t{t}_s1",
                f"pullback_xt_t{t}_s{k}")
    if data != "shapes":
        return geometry + DIGITS_KEYS
    return geometry + SHAPES_KEYS + (CONTINUOUS_KEYS if continuous else ())


SHAPES_KEYS = (
    "fd_oracle", "oracle_confident_fraction", "probe_r2",
    "probe_shape_accuracy", "linear_xT_precision", "linear_xT_target_change", "linear_xT_linearity",
    "linear_xT_monotone", "linear_xT_additivity_error", "linear_h_precision", "linear_h_target_change",
    "linear_h_linearity", "linear_h_monotone", "linear_h_additivity_error", "pullback_xt_target_change",
    "pullback_h_target_change", "pullback_xt_purity", "pullback_xt_coverage", "pullback_xt_consistency",
    "pullback_xt_linearity", "pullback_xt_monotone", "pullback_xt_additivity_error", "pullback_h_purity",
    "pullback_h_coverage", "pullback_h_consistency", "pullback_h_linearity", "pullback_h_monotone")
CONTINUOUS_KEYS = (  # the shapes scores without the shape (scoring.continuous_view)
    "linear_xT_continuous_precision", "linear_xT_continuous_additivity_error", "linear_h_continuous_precision",
    "linear_h_continuous_additivity_error", "pullback_xt_continuous_purity", "pullback_xt_continuous_coverage",
    "pullback_xt_continuous_consistency", "pullback_xt_continuous_linearity", "pullback_xt_continuous_monotone",
    "pullback_xt_continuous_additivity_error", "pullback_h_continuous_purity", "pullback_h_continuous_coverage",
    "pullback_h_continuous_consistency", "pullback_h_continuous_linearity", "pullback_h_continuous_monotone")
DIGITS_KEYS = (
    "fd_classifier", "classifier_confident_fraction", "probe_class_accuracy", "pullback_xt_purity",
    "pullback_xt_coverage", "pullback_xt_consistency", "pullback_xt_linearity", "pullback_xt_monotone",
    "pullback_xt_additivity_error", "pullback_xt_target_change", "pullback_h_purity", "pullback_h_coverage",
    "pullback_h_consistency", "pullback_h_monotone", "pullback_h_target_change")


CONTROL_KEYS = {
    "shapes": ("supervised_precision", "supervised_linearity", "supervised_monotone", "supervised_additivity_error",
               "probe_r2", "probe_shape_accuracy", "pullback_purity", "pullback_consistency", "pullback_coverage",
               "pullback_linearity", "pullback_monotone", "pullback_additivity_error",
               "supervised_continuous_precision", "supervised_continuous_additivity_error",
               "pullback_continuous_purity", "pullback_continuous_consistency", "pullback_continuous_coverage",
               "pullback_continuous_linearity", "pullback_continuous_monotone", "pullback_continuous_additivity_error"),
    "digits": ("probe_class_accuracy", "pullback_purity", "pullback_consistency", "pullback_coverage",
               "pullback_linearity", "pullback_monotone", "pullback_additivity_error")}


def control_gaps(controls: dict, data: str, key: str) -> tuple:
    """(axes, rotated): each positive control's distance from the negative one in standard errors
    of the difference of one measurement each (NaN with one draw)."""
    spread = controls["spread"][data]

    def gap(kind):
        difference = controls[data][kind][key] - controls[data]["mixed"][key]
        with np.errstate(divide="ignore", invalid="ignore"):  # no spread: ±inf, or NaN when nothing differs
            return float(np.float64(difference) / np.hypot(spread[kind][key], spread["mixed"][key]))
    return gap("axes"), gap("rotated")


CONTROL_KINDS = ("axes", "rotated", "mixed")  # two positive controls, then the negative one


def control_key(data: str, name: str) -> str | None:
    """The control measure a model metric corresponds to (linear_{xT,h}_X: supervised_X,
    pullback_{xt,h}_X: pullback_X, the probes themselves), None when no control measures it."""
    for model, control in (("linear_xT_", "supervised_"), ("linear_h_", "supervised_"), ("pullback_xt_", "pullback_"),
                           ("pullback_h_", "pullback_")):
        if name.startswith(model):
            name = control + name[len(model):]
            break
    return name if name in CONTROL_KEYS[data] else None


def judges(stats: dict, controls: dict, data: str, widen: float = 2.0) -> dict:
    """Per metric of a pair's `stats` that a control measures: whether the measure can judge the
    models, i.e. whether both arms' means lie within the range its controls span (each control's
    mean ± `widen` spreads of one measurement). A measure whose models read outside it does not
    place them between a disentangled and an entangled code, so its difference is no evidence
    either way. And whether the seeds resolve an effect as large as the control gap (the smaller
    distance of a positive control from the negative one): `detectable` ≤ that gap; where not, a
    difference of the size that separates a disentangled code from an entangled one could go
    unseen, and the comparison is unresolved. -> {name: {"controls": [low, high], "models":
    [low, high], "judges": bool, "control_gap": float, "resolves": bool}}."""
    out = {}
    for name, v in stats.items():
        key = control_key(data, name)
        if key is None:
            continue
        means = [controls[data][kind][key] for kind in CONTROL_KINDS]
        spreads = [np.nan_to_num(controls["spread"][data][kind][key]) for kind in CONTROL_KINDS]
        low = min(m - widen * e for m, e in zip(means, spreads))
        high = max(m + widen * e for m, e in zip(means, spreads))
        models = sorted((v["lambda0"], v["regularized"]))
        gap = min(abs(means[0] - means[2]), abs(means[1] - means[2]))  # the smaller positive-to-negative distance
        out[name] = {"controls": [float(low), float(high)], "models": [float(m) for m in models],
                     "judges": bool(low <= models[0] and models[1] <= high), "control_gap": float(gap),
                     "resolves": bool(v.get("detectable", float("inf")) <= gap)}
    return out


def judges_lines(verdicts: dict, stats: dict | None = None) -> str:
    """One line per measure that cannot judge, naming the two ranges, and (with the pair's
    `stats`) one per measure the seeds do not resolve, naming the detectable effect and the gap."""
    lines = [f"cannot judge {name}: the models read {v['models'][0]:.3g}–{v['models'][1]:.3g}, outside the "
             f"{v['controls'][0]:.3g}–{v['controls'][1]:.3g} its controls span"
             for name, v in verdicts.items() if not v["judges"]]
    for name, v in verdicts.items():
        if stats is None or not v["judges"] or v["resolves"]:
            continue
        seeds = stats[name]["seeds"]
        power = (f"{seeds} seeds detect differences of {stats[name]['detectable']:.2g} or more" if seeds > 1 else
                 "one seed, no paired test")
        lines.append(f"unresolved {name}: {power}, its control gap is {v['control_gap']:.2g}")
    return "\n".join(lines)


def controls_table(controls: dict) -> str:
    """One row per measure: its chance level, its value on each control of each data set (mean ±
    spread of one measurement over the draws) and the positive controls' gaps in standard errors."""
    lines = ["| data | measure | chance | axes (+) | rotated (+) | mixed (−) | gap / SE (axes, rotated) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for data, keys in CONTROL_KEYS.items():
        for key in keys:
            values = " | ".join(f"{controls[data][kind][key]:.3g} ± {controls['spread'][data][kind][key]:.2g}"
                                for kind in CONTROL_KINDS)
            level = controls["chance"][data].get(key)
            shown = f"{level[0]:.3g} ± {level[1]:.2g}" if level else "—"
            gaps = ", ".join(f"{g:+.1f}" for g in control_gaps(controls, data, key))
            lines.append(f"| {data} | {key} | {shown} | {values} | {gaps} |")
    return "\n".join(lines)


def table(stats: dict) -> str:
    lines = ["| metric | λ = 0 | regularized | difference (reg − 0) | detectable | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, v in stats.items():
        lines.append(f"| {name} | {v['lambda0']:.4g} ± {v['lambda0_se']:.2g} | {v['regularized']:.4g} ± "
                     f"{v['regularized_se']:.2g} | {v['difference']:+.4g} ± {v['difference_se']:.2g} | "
                     f"{v.get('detectable', float('nan')):.2g} | {v['seeds']} |")
    return "\n".join(lines)


def finetune_table(stats: dict) -> str:
    """`table` for each fine-tuned λ against the fine-tunes at λ = 0."""
    return "\n\n".join(f"λ = {key[len('lambda'):]} against λ = 0:\n" + table(value) for key, value in stats.items())


def planned_runs(args) -> list:
    """The key pair (λ = 0 and --best_lambda from scratch on shapes) for every seed, the digits pair
    for --digits_seeds, --best_lambda gated at --gate_p for every seed of --gate_seeds (with its
    λ = 0 partner), then with --finetune the fine-tunes at --finetune_lambdas for every seed of
    --finetune_seeds."""
    runs = []
    for seed in args.seeds:
        runs += [Run("shapes", 0.0, seed), Run("shapes", args.best_lambda, seed)]
        if seed in args.digits_seeds:
            runs += [Run("digits", 0.0, seed), Run("digits", args.best_lambda, seed)]
    for seed in args.gate_seeds:
        runs += [Run("shapes", 0.0, seed)] if seed not in args.seeds else []
        runs += [Run("shapes", args.best_lambda, seed, p=args.gate_p)]
    if args.finetune:
        runs += [Run("shapes", w, seed, from_scratch=False) for seed in args.finetune_seeds
                 for w in args.finetune_lambdas]
    return runs


def _listed(kind, what: str, allowed):
    """An argparse type: comma-separated values of `kind`, each `allowed`; a bad one is one line."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if bad := [v for v in values if not allowed(v)]:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} in {text!r} is not one of {what}")
        return values
    return parse


def COUNT(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def GATE(text: str) -> float:
    """An argparse type: the regularizer's gate p, a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1)")
    return value


SEEDS = _listed(int, "seeds (integers in [0, 2**31))", lambda v: 0 <= v < 2**31)
LAMBDAS = _listed(float, "weights λ (finite numbers >= 0)", lambda v: math.isfinite(v) and v >= 0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/experiments/disentanglement")
    p.add_argument("--config", default="configs/shapes16.py", help="the model and recipe (the λ study's)")
    p.add_argument("--steps", type=int, default=1000, help="training steps of every run (the λ study's)")
    p.add_argument("--seeds", type=SEEDS, default="0,1,2", help="seeds of the key pair (λ = 0 against --best_lambda)")
    p.add_argument("--digits_seeds", type=SEEDS, default="0", help="seeds of the digits pair")
    p.add_argument("--best_lambda", type=float, default=1.0, help="the λ study's best λ")
    p.add_argument("--gate_seeds", type=SEEDS, default="",
                   help="seeds of the loss-where-visible arm: --best_lambda gated at --gate_p (none by default)")
    p.add_argument("--gate_p", type=GATE, default=0.0, help="that arm's gate: the loss acts at t ≥ p T, p in [0, 1)")
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=False,
                   help="also fine-tune the base model (--base) with the paper's optimiser")
    p.add_argument("--finetune_lambdas", type=LAMBDAS, default="0,0.001,1",
                   help="λ of the fine-tunes: 0, the paper's 1e-3, and the from-scratch pair's 1")
    p.add_argument("--finetune_seeds", type=SEEDS, default="0,1,2", help="seeds of the fine-tunes")
    p.add_argument("--finetune_steps", type=int, default=1000, help="steps of every fine-tune")
    p.add_argument("--finetune_lr", type=float, default=1e-5, help="the fine-tunes' constant learning rate (the paper's)")
    p.add_argument("--base", default="runs/experiments/base_model/run",
                   help="the base model (experiments/base_model.py, 8,000 steps without the loss)")
    p.add_argument("--oracle", default="runs/oracle16", help="the 16 px factor oracle (trained when missing)")
    p.add_argument("--classifier", default="runs/digits_classifier", help="the digit classifier (trained when missing)")
    p.add_argument("--results", default="experiments/results/disentanglement",
                   help="where each run's measurements and the summary are written (committed)")
    p.add_argument("--pictures", default="docs/images", help="where the pictures are written")
    p.add_argument("--train_only", action="store_true", help="train the runs, measure nothing")
    p.add_argument("--measure_only", action="store_true",
                   help="measure the runs trained to --steps, train nothing (beside a --train_only process)")
    p.add_argument("--control_seeds", type=COUNT, default=10,
                   help="latent draws of each control measured (their spread is one measurement's error)")
    p.add_argument("--quick", action="store_true", help="tiny runs and measurements (for the test)")
    return p


def prepare(args) -> None:
    """The oracle and the digit classifier, trained once when missing."""
    from isodiff_jax.analysis.networks import digit_classifier, oracle
    if not os.path.exists(os.path.join(args.oracle, "oracle.json")):
        o = oracle.train(16, steps=150 if args.quick else 3000, progress=not args.quick)
        oracle.save(o, args.oracle, oracle.evaluate(o, seed=2, num=256 if args.quick else 2048))
    if not os.path.exists(os.path.join(args.classifier, "classifier.json")):
        c = digit_classifier.train(16, steps=100 if args.quick else 1500, progress=not args.quick)
        digit_classifier.save(c, args.classifier, digit_classifier.evaluate(c))


def main(argv=None, measurers: dict | None = None) -> dict:
    args = parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = planned_runs(args)
    if args.train_only:
        for run in runs:
            started = time.perf_counter()
            train(run, args)
            print(f"{run.name}: trained ({time.perf_counter() - started:.0f} s)", flush=True)
        return {}
    if args.measure_only and not any(trained(run, args) for run in runs):
        raise SystemExit(f"error: --measure_only: none of the {len(runs)} runs is trained to --steps={args.steps} in "
                         f"{args.out} (nor measured in {args.results}); train them first (--train_only)")
    prepare(args)
    summary = {"controls": control_results(args)}
    measurers = {} if measurers is None else measurers
    results = []
    for run in runs:
        result = measured(run, args, measurers)
        if result is not None:
            results.append(result)
            print(f"{run.name}: measured", flush=True)
    o = options(args.quick)
    check_protocol(results, summary["controls"]["protocol"])
    summary["shapes"] = paired(results, "shapes", table_names("shapes", o))
    summary["digits"] = paired(results, "digits", table_names("digits", o))
    summary["shapes_gate"] = (paired(results, "shapes", table_names("shapes", o, continuous=True), p=args.gate_p)
                              if args.gate_seeds else {})
    summary["shapes_finetune"] = finetuned(results, table_names("shapes", o, continuous=True))
    summary["judges"] = {data: judges(summary[data], summary["controls"], data) for data in ("shapes", "digits")}
    summary["judges"]["shapes_gate"] = judges(summary["shapes_gate"], summary["controls"], "shapes")
    summary["judges"]["shapes_finetune"] = {key: judges(stats, summary["controls"], "shapes")
                                            for key, stats in summary["shapes_finetune"].items()}
    summary["runs"] = [r["name"] for r in results]
    summary["pictures"] = pictures(results, args)
    write_results(os.path.join(args.results, "summary.json"), summary)
    print("controls:\n" + controls_table(summary["controls"]))
    for data in ("shapes", "digits"):
        print(f"\n{data} (from scratch, λ = 0 against λ = {args.best_lambda:g}):\n" + table(summary[data]))
        if lines := judges_lines(summary["judges"][data], summary[data]):
            print(lines)
    if summary["shapes_gate"]:
        print(f"\nshapes (from scratch, λ = 0 against λ = {args.best_lambda:g} gated at p = {args.gate_p:g}):\n"
              + table(summary["shapes_gate"]))
        if lines := judges_lines(summary["judges"]["shapes_gate"], summary["shapes_gate"]):
            print(lines)
    if summary["shapes_finetune"]:
        print("\nshapes, fine-tuned from the base model with the paper's optimiser:\n" +
              finetune_table(summary["shapes_finetune"]))
        for key, verdicts in summary["judges"]["shapes_finetune"].items():
            if lines := judges_lines(verdicts, summary["shapes_finetune"][key]):
                print(f"{key}: " + lines.replace("\n", f"\n{key}: "))
    return summary


def pictures(results: list, args) -> list:
    """Top-k pullback x_t edits of each seed-0 model (rows = directions, columns = α) at each t,
    and the supervised linearity curves of the shapes pair (seed 0)."""
    from isodiff_jax.analysis import pictures as pictures_lib
    from isodiff_jax.analysis.edits import pullback
    os.makedirs(args.pictures, exist_ok=True)
    paths = []
    for r in results:
        if r["seed"] != 0:
            continue
        saved = os.path.join(args.out, r["name"], "pullback_strips.npz")
        if not os.path.exists(saved):  # a checkout without the run's workdir: keep its committed pictures
            paths += sorted(glob.glob(os.path.join(args.pictures, f"pullback_{r['name']}_*.png")))
            continue
        strips = np.load(saved)
        for key in strips.files:
            rows = [f"v{i + 1} (s={r['metrics'][f'pullback_xt_{key}_s{i + 1}']:.2f})" for i in range(len(strips[key]))]
            path = os.path.join(args.pictures, f"pullback_{r['name']}_{key}.png")
            paths.append(pictures_lib.editing(path, strips[key], rows, pullback.ALPHAS,
                                              f"{r['name']}: pullback directions at {key} (x_t + α σ_t v_i)"))
    shapes_pair = [r for r in results if r["data"] == "shapes" and r["seed"] == 0 and r["from_scratch"]]
    if shapes_pair:
        paths.append(linearity_curves(shapes_pair, os.path.join(args.pictures, "linearity_curves.png")))
    return [os.path.relpath(p, args.pictures) for p in paths]


def linearity_curves(runs: list, path: str) -> str:
    """The edited factor's mean signed response against α, per factor, in x_T and h, one line per run."""
    from matplotlib.figure import Figure
    from isodiff_jax.analysis.edits import factors, scoring
    alphas = sorted(scoring.ALPHAS + (0.0,))
    fig = Figure(figsize=(3 * len(factors.CONTINUOUS), 5.5), layout="tight")
    axes = fig.subplots(2, len(factors.CONTINUOUS), squeeze=False)
    for row, space in enumerate(("xT", "h")):
        for col, name in enumerate(factors.CONTINUOUS):
            ax = axes[row, col]
            for r in runs:
                ax.plot(alphas, r["metrics"][f"linear_{space}_{name}_response"], marker="o",
                        label=f"λ={r['weight']:g} (R² {r['metrics'][f'linear_{space}_{name}_linearity']:.2f})")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"{name}, edit in {space}", fontsize=9)
            ax.set_xlabel("α")
            ax.legend(fontsize=7)
        axes[row, 0].set_ylabel("signed change of the factor")
    fig.savefig(path, dpi=90)
    return path


if __name__ == "__main__":
    from isodiff_jax import errors, quiet
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
