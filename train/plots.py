"""Figures written next to the weights: training curves and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aperture_zoo.files import atomic_path


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # headless: runs write PNGs, they never open windows
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "",
                made_from: dict[str, str] | None = None) -> Path:
    """Loss and top-1 against epoch, train and test (and validation when held out)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    for key, label in (("train", "train"), ("val", "validation"), ("test", "test")):
        pts = [(e, r.get(f"{key}_loss"), r.get(f"{key}_top1")) for e, r in zip(epochs, rows)]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
            ax_acc.plot([p[0] for p in pts], [p[2] for p in pts], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(plt, fig, path, made_from)


def draw_missing_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], weights: str | os.PathLike[str],
                        test_top1: float, title: str = "") -> bool:
    """Draw a complete run's curves.png when it is missing (killed between its weights and this figure).

    Only from a log that ends at the weights' own final test top-1 (as ``aperture card`` checks it):
    the figure records these weights' SHA-256, so another run's log must not be drawn under it.
    Returns whether it drew.
    """
    from aperture_zoo.files import file_sha256

    last = rows[-1].get("test_top1") if rows else None
    if Path(path).exists() or not isinstance(last, (int, float)) or abs(last - test_top1) > 1e-3:
        return False
    plot_curves(rows, path, title=title, made_from={"weights_sha256": file_sha256(weights)})
    return True


def plot_confusion(
    confusion: list[list[int]], classes: tuple[str, ...] | list[str], path: str | os.PathLike[str], title: str = "",
    made_from: dict[str, str] | None = None,
) -> Path:
    """Row-normalised confusion matrix with the counts written in each cell."""
    plt = _pyplot()
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    from aperture_zoo.terminal import shown as visible

    # users' names are text, never mathtext; a control character is drawn as its escape (no glyph warning)
    shown = [visible(c).replace("$", r"\$") for c in classes]
    ax.set_xticks(range(len(classes)), shown, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), shown)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(plt, fig, path, made_from)


def save_figure(plt: Any, fig: Any, path: str | os.PathLike[str], made_from: dict[str, str] | None = None) -> Path:
    """Write ``fig`` as a PNG through ``atomic_path`` and free it.

    ``made_from`` (``{"weights_sha256": ..., "eval_sha256": ...}``) goes into the PNG's text chunks
    (``files.FIGURE_KEY_PREFIX``): a figure copied beside other weights is refused by its record
    (``provenance.check_figure``), as eval.json is, not trusted for its name."""
    from aperture_zoo.files import FIGURE_KEY_PREFIX

    fig.tight_layout()
    path = Path(path)
    metadata = {FIGURE_KEY_PREFIX + k: v for k, v in (made_from or {}).items()}
    with atomic_path(path) as tmp:  # the temporary name has no .png suffix to go by
        fig.savefig(tmp, dpi=100, format="png", metadata=metadata)
    plt.close(fig)
    return path


def plot_reliability(bins: dict[str, dict[str, list[float]]], path: str | os.PathLike[str], title: str = "",
                     made_from: dict[str, str] | None = None) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one panel per set of probabilities.

    ``bins``: ``{"uncalibrated": reliability_bins(...), "temperature": ..., "calibrated": ...}``. A calibrated model's
    bars sit on the diagonal; bars below it mean over-confidence, above it under-confidence.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(bins), figsize=(5 * len(bins), 4.5), squeeze=False)
    for ax, (label, b) in zip(axes[0], bins.items()):
        n = len(b["count"])
        centres = [(i + 0.5) / n for i in range(n)]
        shown = [i for i, c in enumerate(b["count"]) if c > 0]
        ax.bar([centres[i] for i in shown], [b["accuracy"][i] for i in shown], width=1 / n,
               edgecolor="black", alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.scatter([b["confidence"][i] for i in shown], [b["accuracy"][i] for i in shown], s=12,
                   color="tab:red", zorder=3, label="mean confidence")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=label)
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(plt, fig, path, made_from)
