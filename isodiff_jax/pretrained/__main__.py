from isodiff_jax.pretrained import cli

cli.main()
