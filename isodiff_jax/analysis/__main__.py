from isodiff_jax.analysis import cli

cli.main()
