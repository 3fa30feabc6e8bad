"""Study 2 of issue 10: a base model worth measuring.

Trains `configs/shapes16.py` (shapes at 16×16, no isometry loss) and scores its samples with a
16 px factor oracle: the share of samples the oracle reads as one shape with probability ≥ 0.9
(target ≥ 90 %) and the Fréchet distance in the oracle's features, beside the distance between
two real sets of the same size. The λ study fine-tunes copies of this model.

    .venv/bin/python -m experiments.base_model                   # about 45 minutes on 2 CPU cores
    .venv/bin/python -m experiments.base_model --steps 3000      # shorter

Resumable: the oracle is trained once (runs/oracle16), training resumes from its newest
checkpoint (runs/experiments/base_model/run), and a finished score is not recomputed unless
training went further. Writes runs/experiments/base_model/summary.json and samples.png, and
prints a summary table.
"""
import argparse
import os
import shutil
import time

from experiments import common
from experiments.common import load_config
from isodiff_jax.storage import read_saved, write_json


def train_oracle(directory: str, steps: int) -> None:
    """A 16 px factor oracle in `directory`, unless one is there."""
    from isodiff_jax.analysis.networks import oracle
    if os.path.exists(os.path.join(directory, "oracle.json")):
        return
    model = oracle.train(16, steps=steps)
    scores = oracle.evaluate(model)
    oracle.save(model, directory, scores)
    print("oracle held-out: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)


def score(workdir: str, oracle_dir: str, num_samples: int, sample_steps: int, eta: float) -> dict:
    """fd_oracle, its real-vs-real floor and the oracle-confident share of the newest checkpoint."""
    from isodiff_jax.analysis import load, registry, suite
    from isodiff_jax.analysis.options import Options
    spec, params, step = load.load(workdir)
    options = Options(num_fd_samples=num_samples, fd_sample_steps=sample_steps, fd_sample_eta=eta)
    values = dict(suite.Suite(spec, ["fd"], options, registry.load_resources(oracle_dir)).run(params))
    return {"step": step, **{k: v for k, v in values.items() if isinstance(v, float)}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/experiments/base_model")
    parser.add_argument("--config", default="configs/shapes16.py", help="the model to train (the test uses configs/test.py)")
    parser.add_argument("--oracle", default="runs/oracle16")
    parser.add_argument("--oracle_steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: configs/shapes16.py's)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--num_samples", type=int, default=512, help="samples scored by the oracle")
    parser.add_argument("--sample_steps", type=int, default=100, help="DDIM steps of the scored samples")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM η of the scored samples")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (for the test)")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    if args.quick:
        config.training.num_steps, config.training.global_batch_size = 4, 8
        config.checkpoint.every_steps, config.logging.sample_steps, config.logging.num_samples = 2, 4, 4
        config.logging.progress_bar = False
        args.oracle_steps, args.num_samples, args.sample_steps = 20, 16, 4
    if args.steps is not None:
        config.training.num_steps = args.steps
    if args.batch is not None:
        config.training.global_batch_size = args.batch
    run_dir = os.path.join(args.out, "run")
    summary_path = os.path.join(args.out, "summary.json")

    started = time.perf_counter()
    train_oracle(args.oracle, args.oracle_steps)
    training = common.train(config, run_dir)
    previous = read_saved(summary_path) or {}
    if previous.get("scores", {}).get("step") == config.training.num_steps:
        scores = previous["scores"]
    else:
        scores = score(run_dir, args.oracle, args.num_samples, args.sample_steps, args.eta)
    summary = {"config": args.config, "num_steps": config.training.num_steps,
               "global_batch_size": config.training.global_batch_size,
               "training_seconds_this_call": training["seconds"], "seconds_this_call": time.perf_counter() - started,
               "scored_samples": {"num": args.num_samples, "ddim_steps": args.sample_steps, "eta": args.eta},
               "scores": scores, "last_logged": training["metrics"] or previous.get("last_logged", {})}
    os.makedirs(args.out, exist_ok=True)
    if training["samples"]:
        shutil.copyfile(training["samples"], os.path.join(args.out, "samples.png"))
    write_json(summary_path, summary, indent=2)
    print(f"| steps | batch | oracle-confident share | fd_oracle | real vs real |\n| --- | --- | --- | --- | --- |\n"
          f"| {scores['step']} | {config.training.global_batch_size} | {scores['oracle_confident_fraction']:.3f} | "
          f"{scores['fd_oracle']:.2f} | {scores['fd_oracle_real_vs_real']:.2f} |")
    return summary


if __name__ == "__main__":
    from isodiff_jax import errors, quiet
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
