"""`python -m isodiff_jax.analysis`: metrics and pictures for a training workdir, or a comparison
of several.

    python -m isodiff_jax.analysis --workdir runs/x --out runs/x/analysis [--metrics mrtl,mcn,...]
        [--oracle runs/oracle] [--inception inception_fid.npz] [--lpips lpips_alex.npz]
        [--classifier runs/digits_classifier]
    python -m isodiff_jax.analysis --compare runs/a runs/b --out runs/compare [...]

The metrics are those of `analysis.registry`. Without --metrics, every metric whose inputs are
there runs, and the skipped ones are named with the reason. The first form writes OUT/metrics.json and PNG pictures; the second analyses each
workdir into OUT/<name>/ and writes OUT/comparison.md with every metric side by side, plus the
runs' pictures side by side.
"""
import argparse
import contextlib
import dataclasses

import tqdm

from isodiff_jax import checkpoint, errors, quiet, storage
from isodiff_jax.analysis import load, options as options_lib, pictures, registry, suite
from isodiff_jax.analysis.edits import factors, supervised
from isodiff_jax.analysis.evaluator import merged
from isodiff_jax.analysis.options import Options
from isodiff_jax.analysis.registry import Resources
from isodiff_jax.errors import InvalidValue, MissingPath
from isodiff_jax.spec import ModelSpec


def _draw(out: str, label: str, results: dict) -> list:
    """The pictures for one workdir's pictures' data (`Measured.pictures`); returns the paths written."""
    paths = [pictures.interpolation(storage.join(out, "interpolation.png"), results["interpolation_frames"])]
    if "rtl_values" in results:
        paths.append(pictures.histogram(storage.join(out, "rtl_histogram.png"),
                                        {label: results["rtl_values"]}, "RTL"))
    spectra = {f"{label} {k[:-len('_singular_values')]}": v for k, v in results.items()
               if k.endswith("singular_values")}
    if spectra:
        paths.append(pictures.spectra(storage.join(out, "spectra.png"), spectra))
    if "inversion_pairs" in results:
        paths.append(pictures.inversion(storage.join(out, "inversion.png"), *results["inversion_pairs"]))
    for space, strips in results.get("edit_strips", {}).items():
        paths.append(pictures.editing(storage.join(out, f"editing_{space}.png"), strips,
                                      factors.CONTINUOUS, supervised.ALPHAS, f"edits in {space}"))
    return paths


DEFAULT_SKIPPED = ("vor",)  # measured with mcn


def choose_metrics(requested, spec: ModelSpec, resources: Resources, options: Options) -> list:
    """The requested metrics, or (requested None) every metric of the registry that can run,
    naming those skipped; raises InvalidValue when a requested metric cannot run or an option
    does not fit the model."""
    if requested is not None:
        registry.check(requested, spec, resources, options)
        return list(requested)
    chosen = []
    for metric in (m for m in registry.METRICS if m not in DEFAULT_SKIPPED):
        reason = registry.missing(metric, spec.data.name, resources.given())
        if reason:
            print(f"skipping {reason}")
        else:
            chosen.append(metric)
    registry.check(chosen, spec, resources, options)
    return chosen


class Analysis:
    """The evaluators and the picture-making sampler for one model spec, built once and run on
    the parameters of any number of its checkpoints."""

    def __init__(self, spec: ModelSpec, metrics: list, options: Options, resources: Resources):
        self.metrics = metrics
        self.suite = suite.Suite(spec, self.metrics, options, resources)
        self.interpolation = suite.Interpolation(spec, options)

    def analyse(self, workdir: str, out: str, *, step=None, ema=True) -> dict:
        """Runs the metrics on one workdir; writes OUT/metrics.json and the pictures; returns the scalars."""
        loaded = load.load(workdir, step=step, ema=ema)
        parts = [*self.suite.evaluators.items(), ("interpolation", self.interpolation)]
        measured = []
        with tqdm.tqdm(parts, desc=f"analysing {workdir}", unit="metric", smoothing=0) as bar:
            for name, evaluator in bar:
                bar.set_postfix_str(name)
                measured.append(evaluator.measure(loaded.params))
        results = merged(measured)
        scalars = results.values
        storage.make_dirs(out)
        report = {"workdir": storage.absolute(workdir), "step": loaded.step, "parameters": "ema" if ema else "raw",
                  "metrics_run": self.metrics, "options": dataclasses.asdict(self.suite.options),
                  "metrics": scalars, "pictures": []}
        # the numbers first: a disk that fills up while the pictures are drawn keeps them
        metrics_json = storage.join(out, "metrics.json")
        with _disk_full_says(f"{metrics_json} was not written: nothing of this analysis was kept"):
            storage.write_json(metrics_json, report, indent=2)
        with _disk_full_says(f"{metrics_json} holds every number, but some pictures are missing"):
            paths = _draw(out, storage.name(workdir), results.pictures)
            report["pictures"] = [storage.name(p) for p in paths]
            storage.write_json(metrics_json, report, indent=2)
        return scalars


@contextlib.contextmanager
def _disk_full_says(kept: str):
    """A full disk met in the block -> one line (exit status 1) saying what was kept."""
    try:
        yield
    except OSError as error:
        if not errors.is_disk_full(error):
            raise
        raise errors.DiskFull(f"the disk is full ({error.strerror or error}): {kept}. Free some space and run "
                              f"the same command again") from None


def read_specs(workdirs, step=None) -> list:
    """The model spec of each workdir's checkpoint at `step` (newest by default); a missing
    workdir or checkpoint is a MissingPath naming it."""
    specs = []
    for workdir in workdirs:
        try:
            specs.append(checkpoint.read_spec(workdir, step)[0])
        except FileNotFoundError as error:  # checkpoint.py's errors name the path and the steps there
            raise MissingPath(str(error)) from error
    return specs


def refuse_a_file(out: str) -> None:
    """Raises InvalidValue when `out` exists and is not a directory (its results would be lost)."""
    if storage.exists(out) and not storage.is_dir(out):
        raise InvalidValue(f"--out {out} is an existing file: give a directory (it is created if missing)")


def prepare_outs(outs) -> None:
    """Creates each output directory, or raises InvalidValue naming the one that cannot be one."""
    for out in outs:
        refuse_a_file(out)
    for out in outs:
        try:
            storage.make_dirs(out)
        except OSError as error:
            raise InvalidValue(f"--out {out} cannot be created: {error.strerror or error}") from error


def analyse_all(workdirs, specs, outs, metrics, options: Options, resources: Resources, *, step=None,
                ema=True) -> list:
    """Each workdir (whose checkpoint has the model spec in `specs`) into its out directory. All
    inputs are checked before any work. Workdirs of the same model and data set share one
    `Analysis`, so each kernel compiles once for all of them: the runs of a sweep over seeds, λ or
    p (their real images are those of the first one's seed, the same draws for every run)."""
    key = lambda spec: (spec, spec.data.dataset)
    chosen = {}
    for spec in specs:
        if key(spec) not in chosen:
            chosen[key(spec)] = (spec, choose_metrics(metrics, spec, resources, options))
    prepare_outs(outs)
    analyses = {k: Analysis(spec, m, options, resources) for k, (spec, m) in chosen.items()}
    return [analyses[key(spec)].analyse(workdir, out, step=step, ema=ema)
            for workdir, spec, out in zip(workdirs, specs, outs)]


def comparison_table(names, scalars) -> str:
    """Markdown table: one row per metric, one column per run."""
    keys = sorted(set().union(*scalars))
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key in keys:
        cells = [f"{s[key]:.6g}" if key in s else "" for s in scalars]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_pictures(out: str, names, outs) -> list:
    """Each picture the runs have in common, the runs side by side, labelled."""
    common = set.intersection(*(set(storage.list_dir(o)) for o in outs))
    return [pictures.side_by_side(storage.join(out, f"{name[:-4]}_side_by_side.png"),
                                  [storage.join(o, name) for o in outs], names)
            for name in sorted(common) if name.endswith(".png")]


def comma_separated_ints(text: str) -> tuple:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _parser():
    parser = argparse.ArgumentParser(prog="python -m isodiff_jax.analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--workdir", help="a training workdir")
    runs.add_argument("--compare", nargs="+", metavar="WORKDIR", help="several workdirs side by side")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated, from {','.join(registry.METRICS)} (default: all that can run)")
    parser.add_argument("--out", required=True, help="the directory where metrics.json and the pictures go")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--raw", action="store_true", help="raw parameters instead of the EMA")
    parser.add_argument("--oracle", default=None, help="factor oracle directory (shapes runs; see analysis.networks.oracle)")
    parser.add_argument("--inception", default=None, help="Inception-v3 FID weights (.npz; see docs/fid.md)")
    parser.add_argument("--lpips", default=None, help="LPIPS weights (.npz; see docs/lpips.md) for PPL")
    parser.add_argument("--classifier", default=None,
                        help="digit classifier directory (digits runs; see analysis.networks.digit_classifier)")
    parser.add_argument("--traceback", action="store_true",
                        help=f"show the traceback of input errors too (as {errors.TRACEBACK_ENV}=1 does)")
    for field in options_lib.fields():
        kind = type(field.default)
        shown = ",".join(map(str, field.default)) if kind is tuple else field.default
        parser.add_argument(f"--{field.name}", default=field.default, choices=options_lib.CHOICES.get(field.name),
                            help=f"{field.metadata['help']} (default: {shown})",
                            type=comma_separated_ints if kind is tuple else kind)
    return parser


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks every input (options, workdirs, weights, metrics, output directories), then analyses."""
    options = Options(**{f.name: getattr(args, f.name) for f in options_lib.fields()})
    metrics = None if args.metrics is None else [m for m in args.metrics.split(",") if m.strip()]
    if metrics == []:
        raise InvalidValue(f"--metrics {args.metrics!r} names no metric: give some of {','.join(registry.METRICS)}, "
                           f"or leave --metrics out to run every metric that can run")
    workdirs = args.compare or [args.workdir]
    names = [storage.name(w) for w in workdirs]
    if len(set(names)) != len(names):
        parser.error(f"workdir names must differ to label the comparison: {names}")
    outs = [storage.join(args.out, n) for n in names] if args.compare else [args.out]
    for path in (*workdirs, args.out):
        storage.check_reachable(path)
    refuse_a_file(args.out)  # at once, before the slower checks below
    specs = read_specs(workdirs, args.step)
    resources = registry.load_resources(args.oracle, args.inception, args.lpips, args.classifier)
    scalars = analyse_all(workdirs, specs, outs, metrics, options, resources, step=args.step, ema=not args.raw)
    if args.compare:
        storage.write_text(storage.join(args.out, "comparison.md"), comparison_table(names, scalars))
        compare_pictures(args.out, names, outs)
    print(comparison_table(names, scalars))
    print(f"written to {storage.absolute(args.out)}")


def main(argv=None):
    """The command: an input error prints one line `error: ...` and exits with status 2 (see
    `errors.exit_on_user_error`); --traceback shows its traceback."""
    parser = _parser()
    args = parser.parse_args(argv)
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    with errors.exit_on_user_error(args.traceback):
        run(parser, args)
