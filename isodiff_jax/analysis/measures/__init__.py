"""Measures of a model: path lengths (`rtl`), Jacobian spectra (`spectrum`), exact rank·L_iso
(`rank_iso`), perceptual path length (`ppl`), Fréchet distances (`frechet`, `quality`),
inversion (`inversion`) and linear probes (`probe`)."""
