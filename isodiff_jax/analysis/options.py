"""The evaluators' options, in one place: the analysis command's flags (with their help text),
the config's `evaluation` section and the defaults of both are made from this dataclass."""
import dataclasses

from isodiff_jax.errors import InvalidValue

H_EDITS = ("asyrp", "both")
MCN_INPUTS = ("noised_data", "noise")
SPECTRUM_METHODS = ("dense", "matrix_free")
PPL_SPACES = ("image", "latent")
CHOICES = {"h_edit": H_EDITS, "mcn_input": MCN_INPUTS, "spectrum_method": SPECTRUM_METHODS, "ppl_space": PPL_SPACES}


def _option(default, help: str, minimum=None):
    """A field with its help text (the analysis command's flag help) and its smallest allowed value."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum})


@dataclasses.dataclass(frozen=True)
class Options:
    num_pairs: int = _option(32, "mRTL and factor-RTL pairs", 1)
    timesteps: tuple = _option((500, 700, 900), "mRTL, MCN/VoR and probe timesteps, comma-separated, each in "
                                                "[0, T) of the model", 0)
    num_samples: int = _option(64, "PPL samples; MCN/VoR and inversion use a quarter of it", 1)
    num_fd_samples: int = _option(512, "generated images for fid / fd_oracle (as many real ones again, twice)", 1)
    sample_steps: int = _option(20, "DDIM steps (η = 0) for every decoded image", 1)
    fd_sample_steps: int = _option(0, "fd's samples: DDIM steps (0: sample_steps)", 0)
    fd_sample_eta: float = _option(0.0, "fd's samples: DDIM η (1 = the training loop's grids)", 0.0)
    pool: int = _option(1, "average pooling of h before MCN/VoR and the probes", 1)
    spectrum_method: str = _option("matrix_free", "how MCN/VoR get singular values: 'dense' or 'matrix_free'")
    spectrum_iters: int = _option(64, "matrix-free Lanczos iterations (s_min, hence MCN, converges from above: "
                                      "see docs/benchmarks.md)", 1)
    num_label: int = _option(256, "editing: oracle-labelled samples that define the directions", 1)
    num_edit: int = _option(32, "editing: held-out samples edited", 1)
    h_min_t: int = _option(500, "editing in h: steps with t >= h_min_t are edited", 0)
    h_edit: str = _option("asyrp", "editing in h: 'asyrp' (shift only the predicted x0) or 'both' (both DDIM "
                                   "terms)")
    mcn_input: str = _option("noised_data", "MCN/VoR at 'noised_data' x_t or at pure 'noise' x ~ N(0, I) (the "
                                            "original code)")
    ppl_space: str = _option("image", "latent diffusion: PPL between decoded images ('image', LPIPS when given) "
                                      "or as the MSE of the DDIM latents ('latent')")
    rank_iso_samples: int = _option(4, "rank_iso: real images noised to x_t at each of timesteps (one dense "
                                       "Jacobian each)", 1)
    pullback_timesteps: tuple = _option((500, 900), "pullback: timesteps of the directions, comma-separated, each a "
                                                    "DDIM timestep of sample_steps", 0)
    pullback_k: int = _option(4, "pullback: top directions edited and scored at each timestep", 1)
    pullback_samples: int = _option(8, "pullback: x_T whose DDIM paths give the x_t edited", 1)
    pullback_iters: int = _option(0, "pullback: Lanczos iterations of the directions (0: max(4 k, 64))", 0)
    probe_scans: int = _option(0, "class_probe: digit scans (0: all, fitted on the classifier's training "
                                  "scans; N: the first N, 3/4 of them fitted)", 0)
    seed: int = _option(0, "every evaluator's random numbers (inside training: config.seed)", 0)

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InvalidValue(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("timesteps", "pullback_timesteps"):
            if not (isinstance(getattr(self, name), tuple) and getattr(self, name)):
                raise InvalidValue(f"{name}={getattr(self, name)!r} is invalid: give at least one timestep")
        for field in fields():
            minimum, value = field.metadata["minimum"], getattr(self, field.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if minimum is not None and not all(isinstance(v, (int, float)) and v >= minimum for v in numbers):
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
                raise InvalidValue(f"{field.name}={shown} is invalid: allowed values >= {minimum}")


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Options)
