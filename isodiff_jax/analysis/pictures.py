"""Pictures of analysis results (PNG): interpolation grids with the distance between consecutive
frames plotted under each row, inversion pairs, RTL histograms, singular-value spectra."""
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from isodiff_jax import images  # noqa: E402


def interpolation(path: str, rows: dict) -> str:
    """rows: {label: (K+1, H, W, C) frames in [-1, 1]} -> one figure, a frame strip and a plot of
    the pixel distance between consecutive frames per row."""
    fig, axes = plt.subplots(2 * len(rows), 1, figsize=(12, 3.2 * len(rows)),
                             gridspec_kw={"height_ratios": [2, 1] * len(rows)})
    for i, (label, frames) in enumerate(rows.items()):
        strip = images.grid(images.to_uint8(frames), columns=len(frames))
        axes[2 * i].imshow(strip, interpolation="nearest")
        axes[2 * i].set_axis_off()
        axes[2 * i].set_title(label)
        steps = np.linalg.norm(np.diff(np.asarray(frames, np.float64).reshape(len(frames), -1), axis=0), axis=1)
        axes[2 * i + 1].plot(np.arange(1, len(frames)), steps, marker="o")
        axes[2 * i + 1].set_ylabel("|frame k − frame k−1|")
        axes[2 * i + 1].set_xlim(0.5, len(frames) - 0.5)
    return _save(fig, path)


def inversion(path: str, originals, reconstructions) -> str:
    """Top row the images, bottom row their inversion + reconstruction."""
    both = np.concatenate([images.to_uint8(originals), images.to_uint8(reconstructions)])
    return images.save_grid(path, both, columns=len(originals), scale=max(1, 96 // both.shape[1]))


def histogram(path: str, values: dict, xlabel: str) -> str:
    """values: {label: 1-D array} overlaid."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, v in values.items():
        ax.hist(np.ravel(v), bins=30, alpha=0.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    return _save(fig, path)


def spectra(path: str, values: dict) -> str:
    """values: {label: (B, k) singular values, descending} -> mean log spectrum with a 10-90 % band."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in values.items():
        log_s = np.log10(np.maximum(np.asarray(s, np.float64), 1e-30))
        index = np.arange(1, log_s.shape[1] + 1)
        ax.plot(index, log_s.mean(axis=0), label=label)
        ax.fill_between(index, *np.percentile(log_s, [10, 90], axis=0), alpha=0.2)
    ax.set_xlabel("index i (descending)")
    ax.set_ylabel("log10 s_i")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
