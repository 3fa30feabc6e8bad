"""Study 3 of issue 10: λ_iso and p (the paper's Fig. 4), measured side by side.

From the base model (experiments/base_model.py), fine-tune copies with the sphere isometry loss at
λ_iso ∈ --lambdas (default 0, 1e-4, 1e-3, 1e-2, 1e-1, 1) and gating p = 0.5, then p ∈ --p_values
at one λ (--p_lambda, default: the best λ found), then train from scratch for the same number of
steps at λ = 0 and at the best λ. Every run has the same steps, seed and data order. λ = 0 runs
the regularized step with weight 0, so its rank·L_iso is logged like the others'.

Each run is then measured with every evaluator (one `Suite`, built once: the runs share the model
spec, so nothing compiles again): mRTL and its floor, MCN and VoR (dense, exact), PPL, fd_oracle
and the oracle-confident share, inversion PSNR, factor-RTL, editing precision in x_T and h, probe
R², and the exact rank·L_iso of the encoder at t = 500/700/900 on noised data.

The best λ is the λ > 0 with the lowest mRTL / floor whose oracle-confident share is at most 5
points below λ = 0's (the isometry gain that does not cost sample quality).

    .venv/bin/python -m experiments.lambda_study            # about 2-3 hours on 2 CPU cores
    .venv/bin/python -m experiments.lambda_study --steps 500

Resumable: each run trains in runs/experiments/lambda/<name>/ (resumed if interrupted) and its
measurements are saved in <name>/measured.json; finished runs are skipped. Writes summary.json,
mrtl_vs_lambda.png, fd_vs_lambda.png and interpolation_best.png, and prints the table.
"""
import argparse
import dataclasses
import os
import time

import numpy as np

from experiments import common
from experiments.common import Run, run_config
from isodiff_jax.storage import read_saved, write_json, write_results
from isodiff_jax.train import monitor

METRICS = ("mrtl", "mcn", "vor", "ppl", "inversion", "fd", "factor_rtl", "edit", "probe", "rank_iso")
COLUMNS = ("mrtl", "mrtl_floor", "mrtl_over_floor", "t500_mcn", "t500_vor", "ppl_pixel_l2", "fd_oracle",
           "oracle_confident_fraction", "inversion_psnr", "factor_rtl", "edit_xT_precision", "edit_h_precision",
           "probe_r2", "rank_iso_t500", "rank_iso_t700", "rank_iso_t900")


def trajectory(workdir: str) -> list:
    """[(step, rank·L_iso)] logged during training (regularized steps' running means)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [(record["step"], record["rank_loss"]) for record in monitor.read_records(path) if "rank_loss" in record]


TREND_T = 2.0  # |t| of the slope beyond which rank·L_iso is said to grow or fall


def trend(points) -> str:
    """"growing", "falling" or "flat": rank·L_iso over the second half of training, by the
    t-statistic of its least-squares slope against the step (growing: t > 2, the slope more
    than twice its standard error). The logged values are means of single-probe estimates, so
    the slope's sign alone is noise: λ = 0's wandered between 19.7 and 20.7 with a positive
    slope at t = 0.3. Fewer than 3 points in the second half read as flat; none at all (the
    path-length step does not compute rank·L_iso) as "not logged"."""
    if not points:
        return "not logged"
    half = points[len(points) // 2:]
    if len(half) < 3:
        return "flat"
    steps, values = np.asarray(half, np.float64).T
    dev = steps - steps.mean()
    slope = dev @ (values - values.mean()) / (dev @ dev)
    resid = values - values.mean() - slope * dev
    se = np.sqrt(resid @ resid / (len(half) - 2) / (dev @ dev))
    if se == 0:  # on a straight line: its slope decides
        return "growing" if slope > 0 else "falling" if slope < 0 else "flat"
    t = slope / se
    return "growing" if t > TREND_T else "falling" if t < -TREND_T else "flat"


class Measurer:
    """Every evaluator for the shared spec, built once, run on each run's EMA parameters."""

    def __init__(self, spec, args):
        from isodiff_jax.analysis import registry, suite
        from isodiff_jax.analysis.options import Options
        self.spec, self.args = spec, args
        if args.quick:
            half = spec.schedule.num_timesteps // 2
            options = Options(num_pairs=4, timesteps=(half,), num_samples=8, num_fd_samples=8, sample_steps=2,
                              fd_sample_steps=2, spectrum_method="matrix_free", spectrum_iters=4, num_label=16,
                              num_edit=2, h_min_t=half, rank_iso_samples=1)
        else:
            options = Options(num_pairs=32, timesteps=(500, 700, 900), num_samples=64, num_fd_samples=512,
                              sample_steps=20, fd_sample_steps=100, fd_sample_eta=1.0, spectrum_method="dense",
                              rank_iso_samples=16)
        self.options = options
        self.suite = suite.Suite(spec, METRICS, options, registry.load_resources(args.oracle))
        self.interpolation = suite.Interpolation(spec, options)

    def measure(self, workdir: str) -> dict:
        from isodiff_jax.analysis import load
        spec, params, step = load.load(workdir)
        if spec != self.spec:
            raise ValueError(f"{workdir} holds another model than the study's: {spec}")
        values = dict(self.suite.run(params))
        frames = self.interpolation.pictures(params)["interpolation_frames"]
        np.savez_compressed(os.path.join(workdir, "interpolation.npz"), **frames)
        return {"step": step, "metrics": values}


def measured(run: Run, args, measurers: dict) -> dict:
    """Trains (or resumes) and measures one run, unless its measurements are saved. `measurers`
    holds the evaluators once built, by model and measurement setting, for the next runs."""
    workdir = os.path.join(args.out, run.name)
    path = os.path.join(workdir, "measured.json")
    if (saved := read_saved(path)) is not None:
        return saved
    started = time.perf_counter()
    common.train(run_config(run, args), workdir)
    from isodiff_jax import checkpoint
    spec = checkpoint.read_spec(workdir)[0]
    key = (spec, args.quick, os.path.abspath(args.oracle))
    if key not in measurers:
        measurers[key] = Measurer(spec, args)
    result = {**dataclasses.asdict(run), **measurers[key].measure(workdir), "trajectory": trajectory(workdir),
              "seconds": time.perf_counter() - started}
    result["rank_iso_trend"] = trend(result["trajectory"])
    result["rank_iso_still_growing"] = result["rank_iso_trend"] == "growing"
    write_json(path, result, indent=2)
    return result


def best_weight(results: list, kind: str = "sphere") -> float | None:
    """The λ > 0 of regularizer `kind` with the lowest mRTL / floor whose confident share is
    within 5 points of λ = 0's."""
    zero = [r for r in results if r["weight"] == 0 and not r["from_scratch"]]
    if not zero:
        return None
    floor = zero[0]["metrics"].get("oracle_confident_fraction", 0.0) - 0.05
    candidates = [r for r in results if r["weight"] > 0 and not r["from_scratch"] and r["p"] == 0.5
                  and r.get("kind", "sphere") == kind
                  and r["metrics"].get("oracle_confident_fraction", 0.0) >= floor]
    if not candidates:
        return None
    return min(candidates, key=lambda r: r["metrics"]["mrtl_over_floor"])["weight"]


def table(results: list) -> str:
    lines = ["| run | λ | p | " + " | ".join(COLUMNS) + " | rank·L_iso in training (2nd half) |",
             "| --- | --- | --- |" + " --- |" * (len(COLUMNS) + 1)]
    for r in results:
        cells = [f"{r['metrics'].get(c, float('nan')):.4g}" for c in COLUMNS]
        lines.append(f"| {r['name']} | {r['weight']:g} | {r['p']:g} | " + " | ".join(cells)
                     + f" | {trend(r['trajectory'])} |")
    return "\n".join(lines)


def pictures(results: list, best, out: str) -> list:
    """mRTL (with its floor) and fd_oracle against λ; interpolation frames of λ = 0 and the best λ."""
    from matplotlib.figure import Figure
    from isodiff_jax.analysis import pictures as pictures_lib
    sweep = sorted((r for r in results if r["p"] == 0.5 and not r["from_scratch"]), key=lambda r: r["weight"])
    if not sweep:
        return []
    x = [max(r["weight"], 1e-5) for r in sweep]  # λ = 0 drawn at 1e-5 on the log axis
    paths = []
    for name, keys, ylabel in (("mrtl_vs_lambda.png", ("mrtl", "mrtl_floor"), "mRTL"),
                               ("fd_vs_lambda.png", ("fd_oracle", "fd_oracle_real_vs_real"), "fd_oracle")):
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for key in keys:
            ax.plot(x, [r["metrics"].get(key, np.nan) for r in sweep], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("λ_iso (λ = 0 drawn at 1e-5)")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out, name))
        fig.savefig(paths[-1], dpi=100)
    chosen = [r for r in sweep if r["weight"] in (0.0, best)]
    if best is not None and len(chosen) == 2:
        rows = {}
        for r in chosen:
            frames = np.load(os.path.join(out, r["name"], "interpolation.npz"))
            rows[f"λ={r['weight']:g} slerp"] = frames["slerp"]
        paths.append(pictures_lib.interpolation(os.path.join(out, "interpolation_best.png"), rows))
    return paths


def check_inputs(args) -> None:
    """Stops with a message when the base model or the oracle is missing."""
    if not os.path.isdir(os.path.join(args.base, "checkpoints")):
        raise SystemExit(f"{args.base} is not a trained workdir: run experiments/base_model.py first")
    if not os.path.exists(os.path.join(args.oracle, "oracle.json")):
        raise SystemExit(f"{args.oracle} holds no oracle: run experiments/base_model.py first")


def run_parser(description: str) -> argparse.ArgumentParser:
    """The flags of every study run (this study's and experiments/regularizer_study.py's, which share
    runs/experiments/lambda, so their shared runs must be trained alike)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/experiments/lambda")
    parser.add_argument("--base", default="runs/experiments/base_model/run", help="the base model's workdir")
    parser.add_argument("--config", default="configs/shapes16.py", help="the base model's config")
    parser.add_argument("--oracle", default="runs/oracle16")
    parser.add_argument("--steps", type=int, default=1000, help="steps of every run")
    parser.add_argument("--checkpoint_every", type=int, default=250,
                        help="steps between checkpoints (an interrupted run resumes from the last)")
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (constant)")
    parser.add_argument("--grid_steps", type=int, default=100, help="DDIM steps of each run's sample grid")
    parser.add_argument("--quick", action="store_true", help="tiny measurements (for the test)")
    return parser


def main(argv=None, measurers: dict | None = None) -> dict:
    """The study (argv: its flags). Pass the same `measurers` dict to several calls in one process
    (this study's, experiments/regularizer_study.py's) to build the evaluators once."""
    parser = run_parser(__doc__)
    parser.add_argument("--lambdas", default="0,1e-4,1e-3,1e-2,1e-1,1")
    parser.add_argument("--p_values", default="0.25,0.75", help="p at --p_lambda (p = 0.5 is in the λ sweep)")
    parser.add_argument("--p_lambda", type=float, default=None, help="λ of the p runs (default: the best λ)")
    parser.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True,
                        help="also train from scratch at λ = 0 and the best λ")
    args = parser.parse_args(argv)
    check_inputs(args)
    os.makedirs(args.out, exist_ok=True)
    measurers, results = {} if measurers is None else measurers, []
    floats = lambda text: [float(v) for v in text.split(",") if v.strip()]
    for weight in floats(args.lambdas):
        results.append(measured(Run(f"lam{weight:g}_p0.5", weight, 0.5), args, measurers))
    best = best_weight(results)
    p_weight = args.p_lambda if args.p_lambda is not None else best
    if p_weight is not None:
        for p in floats(args.p_values):
            results.append(measured(Run(f"lam{p_weight:g}_p{p:g}", p_weight, p), args, measurers))
    if args.scratch:
        for weight in sorted({0.0} | ({best} if best is not None else set())):
            results.append(measured(Run(f"scratch_lam{weight:g}", weight, 0.5, from_scratch=True), args, measurers))
    # trends from the trajectories, so that older records (with only the old flag) read the same
    trends = [(r["weight"], trend(r["trajectory"])) for r in results if r["p"] == 0.5 and not r["from_scratch"]]
    not_growing = [weight for weight, kind in trends if kind != "growing"]
    falling = [weight for weight, kind in trends if kind == "falling"]
    summary = {"steps": args.steps, "lr": args.lr, "base": args.base, "best_lambda": best,
               "smallest_lambda_where_rank_iso_stops_growing": min(not_growing) if not_growing else None,
               "smallest_lambda_where_rank_iso_falls": min(falling) if falling else None,
               "runs": results}
    summary["pictures"] = [os.path.basename(p) for p in pictures(results, best, args.out)]
    write_results(os.path.join(args.out, "summary.json"), summary)
    print(table(results))
    print(f"best λ: {best}; smallest λ at which rank·L_iso stops growing: "
          f"{summary['smallest_lambda_where_rank_iso_stops_growing']}, falls: "
          f"{summary['smallest_lambda_where_rank_iso_falls']}")
    return summary


if __name__ == "__main__":
    from isodiff_jax import errors, quiet
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
