"""What the studies share: a config file read by path, the run recipe of the λ study (a
fine-tune of the base model or a run from scratch, with one regularizer), which the regularizer
and disentanglement studies reuse, and training a run so that a stop signal stops the study."""
import dataclasses
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # configs are read from here


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    weight: float
    p: float
    from_scratch: bool = False
    kind: str = "sphere"  # the regularizer (experiments/regularizer_study.py varies it)


def load_config(path: str):
    """The get_config() of the config file at `path` (relative to the repository root)."""
    spec = importlib.util.spec_from_file_location("study_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_config(run: Run, args):
    """--config (configs/shapes16.py, the base model's) with this run's regularizer, start and length."""
    c = load_config(args.config)
    c.regularizer.kind, c.regularizer.weight, c.regularizer.p = run.kind, run.weight, run.p
    c.training.num_steps = args.steps
    c.checkpoint.every_steps = min(args.checkpoint_every, args.steps)
    c.logging.log_every_steps = max(1, args.steps // 20)
    c.logging.sample_steps = args.grid_steps
    c.logging.progress_bar = not args.quick
    if not run.from_scratch:  # fine-tuning: the base model's EMA parameters, a constant small rate
        c.training.init_from = args.base
        c.optim.lr, c.optim.decay, c.optim.warmup_steps = args.lr, "constant", 0
    else:
        c.optim.warmup_steps = min(c.optim.warmup_steps, args.steps // 10)
    if args.quick:
        c.training.global_batch_size, c.logging.num_samples = 8, 4
    return c


def train(config, workdir: str) -> dict:
    """launch.train, except that a run stopped by SIGTERM or SIGINT stops the whole study, with
    train.py's exit status (0 or 130), instead of letting the study go on to its next run: a
    preempted sweep should end, and the same command resumes it where it stopped."""
    from isodiff_jax import launch
    from isodiff_jax.train import preemption
    summary = launch.train(config, workdir)
    if summary["stopped_by"]:
        print(f"stopped by {summary['stopped_by']} at step {summary['final_step']} of {workdir}: the same "
              f"command resumes the study there", flush=True)
        raise SystemExit(preemption.EXIT_STATUS[summary["stopped_by"]])
    return summary


def detectable_in_se(seeds: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true paired difference, in standard errors of the mean difference, that a
    two-sided paired t-test at level `alpha` over `seeds` pairs detects with probability `power`
    (the noncentral t distribution with seeds − 1 degrees of freedom); inf below 2 seeds. At 80 %
    and 5 %: 3 seeds 5.65, 5 seeds 3.76, 10 seeds 3.15 (a z-test's 2.80 as seeds grow)."""
    import numpy as np
    from scipy import optimize, stats
    if seeds < 2:
        return float("inf")
    df = seeds - 1
    t = stats.t.ppf(1 - alpha / 2, df)
    missed = lambda nc: stats.nct.sf(t, df, nc) + np.nan_to_num(stats.nct.cdf(-t, df, nc)) - power
    return float(optimize.brentq(missed, 0.0, 200.0))
