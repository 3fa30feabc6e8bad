"""The studies of docs/results.md, as thin drivers over the package: each names the runs to train,
the registry's measures to take (`isodiff_jax.analysis.registry`) and the tables to write. Run
them from the repository root as modules, e.g. `python -m experiments.lambda_study`; they import
`isodiff_jax` and `experiments.common` only (tools/check_layers.py checks it)."""
