"""Pictures of analysis results (PNG): interpolation grids with the distance between consecutive
frames plotted under each row, inversion pairs, editing strips, RTL histograms, singular-value
spectra, and several runs' pictures side by side.

Each plot has a pure `*_figure` function returning a `matplotlib.figure.Figure` (a notebook shows
it inline) and a function of the same name without the suffix that writes it as a PNG. Figures
are drawn without pyplot, so importing this module leaves matplotlib's backend alone.
"""
import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from isodiff_jax import images, storage


def interpolation_figure(rows: dict) -> Figure:
    """rows: {label: (K+1, H, W, C) frames in [-1, 1]} -> one figure, a frame strip and a plot of
    the pixel distance between consecutive frames per row."""
    fig = Figure(figsize=(12, 3.2 * len(rows)), layout="tight")
    axes = fig.subplots(2 * len(rows), 1, gridspec_kw={"height_ratios": [2, 1] * len(rows)})
    for i, (label, frames) in enumerate(rows.items()):
        strip = images.grid(images.to_uint8(frames), columns=len(frames))
        axes[2 * i].imshow(strip, interpolation="nearest")
        axes[2 * i].set_axis_off()
        axes[2 * i].set_title(label)
        steps = np.linalg.norm(np.diff(np.asarray(frames, np.float64).reshape(len(frames), -1), axis=0), axis=1)
        axes[2 * i + 1].plot(np.arange(1, len(frames)), steps, marker="o")
        axes[2 * i + 1].set_ylabel("|frame k − frame k−1|")
        axes[2 * i + 1].set_xlim(0.5, len(frames) - 0.5)
    return fig


def interpolation(path: str, rows: dict) -> str:
    """`interpolation_figure(rows)` written to `path`; returns path."""
    return _save(interpolation_figure(rows), path)


def inversion(path: str, originals, reconstructions) -> str:
    """Top row the images, bottom row their inversion + reconstruction."""
    both = np.concatenate([images.to_uint8(originals), images.to_uint8(reconstructions)])
    return images.save_grid(path, both, columns=len(originals), scale=max(1, 96 // both.shape[1]))


def editing_figure(strips, row_labels, alphas, title: str) -> Figure:
    """strips (F, 1 + len(alphas), H, W, C) in [-1, 1], columns α < 0, the original, α > 0."""
    strips = np.asarray(strips)
    columns = [f"α={a:+g}" for a in alphas if a < 0] + ["original"] + [f"α={a:+g}" for a in alphas if a > 0]
    fig = Figure(figsize=(1.4 * len(columns), 1.4 * len(strips)), layout="tight")
    axes = fig.subplots(len(strips), len(columns), squeeze=False)
    for i, row in enumerate(strips):
        for j, image in enumerate(images.to_uint8(row)):
            axes[i, j].imshow(image, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(columns[j], fontsize=8)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title)
    return fig


def editing(path: str, strips, row_labels, alphas, title: str) -> str:
    """`editing_figure(strips, row_labels, alphas, title)` written to `path`; returns path."""
    return _save(editing_figure(strips, row_labels, alphas, title), path)


def side_by_side(path: str, paths, labels) -> str:
    """The PNGs at `paths` next to each other on a white canvas, each with its label above."""
    figures = [Image.open(storage.open_read(p)).convert("RGB") for p in paths]
    top = 16
    canvas = Image.new("RGB", (sum(f.width for f in figures), top + max(f.height for f in figures)), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for figure, label in zip(figures, labels):
        canvas.paste(figure, (x, top))
        draw.text((x + 4, 2), label, fill="black")
        x += figure.width
    return images.save_png(path, canvas)


def histogram_figure(values: dict, xlabel: str) -> Figure:
    """values: {label: 1-D array} overlaid."""
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    for label, v in values.items():
        ax.hist(np.ravel(v), bins=30, alpha=0.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    return fig


def histogram(path: str, values: dict, xlabel: str) -> str:
    """`histogram_figure(values, xlabel)` written to `path`; returns path."""
    return _save(histogram_figure(values, xlabel), path)


def spectra_figure(values: dict) -> Figure:
    """values: {label: (B, k) singular values, descending} -> mean log spectrum with a 10-90 % band."""
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    for label, s in values.items():
        log_s = np.log10(np.maximum(np.asarray(s, np.float64), 1e-30))
        index = np.arange(1, log_s.shape[1] + 1)
        ax.plot(index, log_s.mean(axis=0), label=label)
        ax.fill_between(index, *np.percentile(log_s, [10, 90], axis=0), alpha=0.2)
    ax.set_xlabel("index i (descending)")
    ax.set_ylabel("log10 s_i")
    ax.legend()
    return fig


def spectra(path: str, values: dict) -> str:
    """`spectra_figure(values)` written to `path`; returns path."""
    return _save(spectra_figure(values), path)


def _save(fig: Figure, path: str) -> str:
    """Writes fig as a PNG at 100 dpi, atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    storage.write_bytes(path, buffer.getvalue())
    return path
