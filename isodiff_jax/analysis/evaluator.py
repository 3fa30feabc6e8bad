"""The evaluator contract, shared by every measure of the library.

An evaluator is built once for a model spec (its jitted kernels take the parameters as an
argument) and then measures any parameters of that model:

    measure(params) -> Measured(values, pictures)   one pass over the parameters
    run(params)      -> (name, float) pairs            the values alone (training logs these)
    pictures(params) -> {name: image data}             the pictures' data alone

`values` are Python floats named as the registry entry declares (`registry.REGISTRY`); the
pictures' data are arrays or lists (image strips, singular values, response curves) that
`analysis.pictures` draws. A caller that wants both calls `measure` once.
"""
import dataclasses
from typing import Any, Iterator


@dataclasses.dataclass(frozen=True)
class Measured:
    """What one evaluator measured on one set of parameters."""
    values: dict[str, float]
    pictures: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        wrong = {name: type(value).__name__ for name, value in self.values.items() if not isinstance(value, float)}
        if wrong:
            raise TypeError(f"an evaluator's values must be Python floats (arrays and lists go to pictures): {wrong}")


class Evaluator:
    """Base class: subclasses define `measure(params) -> Measured`."""

    def measure(self, params) -> Measured:
        raise NotImplementedError

    def run(self, params) -> Iterator[tuple[str, float]]:
        yield from self.measure(params).values.items()

    def pictures(self, params) -> dict[str, Any]:
        return self.measure(params).pictures


def merged(parts) -> Measured:
    """Several Measured as one (later names win; they should not clash)."""
    values, pictures = {}, {}
    for part in parts:
        values.update(part.values)
        pictures.update(part.pictures)
    return Measured(values, pictures)
