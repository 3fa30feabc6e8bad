"""The evaluators' options, in one place: the analysis command's flags, the config's
`evaluation` section and the defaults of both are made from this dataclass."""
import dataclasses

H_EDITS = ("asyrp", "both")
MCN_INPUTS = ("noised_data", "noise")


@dataclasses.dataclass(frozen=True)
class Options:
    num_pairs: int = 32  # mRTL and factor-RTL pairs
    timesteps: tuple = (500, 700, 900)  # mRTL, MCN/VoR and probe timesteps
    num_samples: int = 64  # PPL samples; MCN/VoR and inversion use a quarter of it
    num_fd_samples: int = 512  # generated images for fid / fd_oracle (as many real ones again, twice)
    sample_steps: int = 20  # DDIM steps (η = 0) for every decoded image
    fd_sample_steps: int = 0  # fd's samples: DDIM steps (0: sample_steps)
    fd_sample_eta: float = 0.0  # fd's samples: DDIM η (1 = the training loop's grids)
    pool: int = 1  # average pooling of h before MCN/VoR and the probes
    spectrum_method: str = "matrix_free"  # "dense" or "matrix_free"
    spectrum_iters: int = 64  # matrix-free Lanczos iterations (s_min, hence MCN, converges from above: see docs/benchmarks.md)
    num_label: int = 256  # editing: oracle-labelled samples that define the directions
    num_edit: int = 32  # editing: held-out samples edited
    h_min_t: int = 500  # editing in h: steps with t >= h_min_t are edited
    h_edit: str = "asyrp"  # editing in h: "asyrp" (shift only the predicted x0) or "both" (both DDIM terms)
    mcn_input: str = "noised_data"  # MCN/VoR at "noised_data" x_t or at pure "noise" x ~ N(0, I) (the original code)
    seed: int = 0  # every evaluator's random numbers (inside training: config.seed)


    def __post_init__(self):
        for name, allowed in (("h_edit", H_EDITS), ("mcn_input", MCN_INPUTS),
                              ("spectrum_method", ("dense", "matrix_free"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Options)
