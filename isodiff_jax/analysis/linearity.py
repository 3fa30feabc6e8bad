"""Linearity and composition of supervised edits (the paper's Figs. 7 and 8; method.md §6b).

The directions are `editing`'s: per continuous shapes factor, the difference of the mean latents
of the oracle's top and bottom quartile of the factor's edit coordinate, in x_T and (one per
DDIM step) in h. Each is edited at α ∈ `edit_scores.ALPHAS` (stds of the latents along it) and
scored with `edit_scores.supervised_family`: editing precision, the R² of the edited factor's
response to α, its monotonicity, the unintended changes at each |α|, and the additivity error
of two composed edits.
"""
import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax.analysis import edit_scores, editing, factors
from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.spec import ModelSpec

SPACES = ("xT", "h")


def value_names() -> tuple[str, ...]:
    """The values `SupervisedEdits` measures."""
    return tuple(n for space in SPACES
                 for n in edit_scores.supervised_names(factors.CONTINUOUS, prefix=f"linear_{space}_"))


class SupervisedEdits(Evaluator):
    """Evaluator: values linear_{xT,h}_<factor>_<score> and linear_{xT,h}_{precision, linearity,
    monotone, additivity_error}; pictures linear_{space}_<factor>_response, the mean signed
    response at each α (the linearity curves). Built once; `measure(params)` compiles nothing for
    new parameters (the `editing.Editor` kernels take them)."""

    def __init__(self, spec: ModelSpec, reader, *, num_label: int = 256, num_edit: int = 32, sample_steps: int = 20,
                 h_min_t: int = 500, batch_size: int = 64, seed: int = 0):
        self.editor = editing.Editor(spec, sample_steps, h_min_t)
        self.reader, self.batch_size = reader, batch_size
        self.image_shape = spec.image_shape
        k_label, k_edit = jax.random.split(jax.random.PRNGKey(seed))
        self.x_label = np.asarray(jax.random.normal(k_label, (num_label, *spec.image_shape), jnp.float32))
        self.x_edit = np.asarray(jax.random.normal(k_edit, (num_edit, *spec.image_shape), jnp.float32))

    def measure(self, params) -> Measured:
        editor, reader = self.editor, self.reader
        labelled = [editor.h_along_paths(params, self.x_label[i:i + self.batch_size])
                    for i in range(0, len(self.x_label), self.batch_size)]
        labels = reader.read(np.concatenate([images for images, _ in labelled]))
        hs = np.concatenate([h for _, h in labelled], axis=1)
        original_images = editor.decode(params, self.x_edit)
        original = reader.read(original_images)
        shifts = {"xT": {}, "h": {}}
        for name in factors.CONTINUOUS:
            coordinate = editing.edit_coordinate(labels, name)
            d, sigma = editing.direction(self.x_label, coordinate)
            shifts["xT"][name] = (sigma * d).reshape(self.image_shape).astype(np.float32)
            shifts["h"][name] = editor.h_shifts(hs, coordinate)
        decode = {"xT": lambda shift: editor.decode(params, editing.edit_x_T(self.x_edit, shift)),
                  "h": lambda shift: editor.decode(params, self.x_edit, shift)}
        values, curves = {}, {}
        for space in SPACES:
            read = lambda shift, space=space: reader.read(decode[space](shift))
            numbers, responses = edit_scores.numbers_and_curves(edit_scores.supervised_family(
                reader, original, read, shifts[space], prefix=f"linear_{space}_"))
            values.update(numbers)
            curves.update(responses)
        return Measured(values, curves)
