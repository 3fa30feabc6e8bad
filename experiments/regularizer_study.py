"""Study 4 of issue 10: the regularizers side by side.

From the base model (experiments/base_model.py), fine-tune copies with each regularizer in
--kinds (default: sphere, the paper's loss; euclidean, L_iso with G = I; path_length, StyleGAN2's
path-length penalty) at each weight in --weights, with the same steps, seed, data order, learning
rate and gating p = 0.5 as the λ study, and measure each with every evaluator. Each kind's best
weight is chosen by the λ study's rule (the lowest mRTL / floor whose oracle-confident share is
at most 5 points below λ = 0's), and the kinds are compared at their best weights, beside no
regularizer (λ = 0).

The runs live in the λ study's directory by default, so the λ = 0 run and the sphere runs it has
already made are reused, not trained again (same names, same settings).

    .venv/bin/python -m experiments.regularizer_study       # about 15 minutes per new run on 2 CPU cores

Resumable as the λ study is. Writes regularizers.json, regularizers.png (mRTL / floor and
fd_oracle against the weight, one line per kind) and prints the table.
"""
import os

import numpy as np

from experiments import lambda_study  # one definition of runs, measures and the best-weight rule

from isodiff_jax import storage

KINDS = ("sphere", "euclidean", "path_length")


def run_name(kind: str, weight: float) -> str:
    """The λ study's names for sphere (and for λ = 0), prefixed names for the other kinds."""
    base = f"lam{weight:g}_p0.5"
    return base if kind == "sphere" or weight == 0 else f"{kind}_{base}"


def picture(results: list, best: dict, out: str) -> str:
    """mRTL / floor and fd_oracle against the weight, one line per kind, λ = 0 as a dashed line."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.5))
    zero = [r for r in results if r["weight"] == 0]
    for ax, key in zip(fig.subplots(1, 2), ("mrtl_over_floor", "fd_oracle")):
        for kind in best:
            sweep = sorted((r for r in results if r["kind"] == kind and r["weight"] > 0), key=lambda r: r["weight"])
            ax.plot([r["weight"] for r in sweep], [r["metrics"].get(key, np.nan) for r in sweep], marker="o",
                    label=kind + (f" (best λ={best[kind]:g})" if best[kind] is not None else ""))
        if zero:
            ax.axhline(zero[0]["metrics"].get(key, np.nan), color="grey", linestyle="--", label="λ = 0")
        ax.set_xscale("log")
        ax.set_xlabel("weight λ")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "regularizers.png")
    fig.savefig(path, dpi=100)
    return path


def main(argv=None, measurers: dict | None = None) -> dict:
    """The study (argv: its flags); `measurers` as lambda_study.main's (shared evaluators)."""
    parser = lambda_study.run_parser(__doc__)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--weights", default="1e-3,1e-2,1e-1", help="the sweep of every kind")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"--kinds: unknown {unknown}; allowed {KINDS}")
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if not weights or min(weights) <= 0:
        parser.error("--weights: positive numbers, e.g. 1e-3,1e-2,1e-1")
    lambda_study.check_inputs(args)
    os.makedirs(args.out, exist_ok=True)

    measurers = {} if measurers is None else measurers
    results = [{**lambda_study.measured(lambda_study.Run(run_name("sphere", 0.0), 0.0, 0.5), args, measurers),
                "kind": "none"}]
    for kind in kinds:
        for weight in weights:
            run = lambda_study.Run(run_name(kind, weight), weight, 0.5, kind=kind)
            results.append({**lambda_study.measured(run, args, measurers), "kind": kind})
    zero = {**results[0], "kind": "sphere"}  # the rule compares every kind with λ = 0
    best = {kind: lambda_study.best_weight([zero] + [r for r in results if r["kind"] == kind], kind)
            for kind in kinds}
    side_by_side = [results[0]] + [next(r for r in results if r["kind"] == kind and r["weight"] == best[kind])
                                   for kind in kinds if best[kind] is not None]
    summary = {"steps": args.steps, "lr": args.lr, "base": args.base, "weights": weights, "best_weight": best,
               "side_by_side": [r["name"] for r in side_by_side], "runs": results,
               "pictures": [os.path.basename(picture(results, best, args.out))]}
    storage.write_results(os.path.join(args.out, "regularizers.json"), summary)
    print("each regularizer at its best weight (none: λ = 0):")
    print(lambda_study.table(side_by_side))
    print("every run:")
    print(lambda_study.table(results))
    print("best weights: " + ", ".join(f"{k}: {v}" for k, v in best.items()))
    return summary


if __name__ == "__main__":
    from isodiff_jax import errors
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
