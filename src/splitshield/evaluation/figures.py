"""Reconstruction figures: a PNG grid with the original test images on top and one row per attack (and run).

Drawn with PIL directly rather than torchvision.utils.make_grid/save_image: a labelled grid is a few lines, and the
figure then works where torchvision is missing or mismatched with the installed torch (as on our CPU machines).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from splitshield.errors import UserError
from splitshield.runs import RESULTS_DIR


def grid_image(rows: Sequence[tuple[str, torch.Tensor]], *, scale: int = 3, pad: int = 2) -> Image.Image:
    """rows of (label, uint8 (K, C, H, W)) -> one RGB image: a label column, then K images per row."""
    k = max(len(images) for _, images in rows)
    _, _, h, w = rows[0][1].shape
    h, w = h * scale, w * scale
    label_w = 7 * max(len(label) for label, _ in rows) + 2 * pad
    canvas = Image.new("RGB", (label_w + k * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = pad + r * (h + pad)
        draw.text((pad, top + h // 2 - 5), label, fill="black")
        for i, img in enumerate(images):
            arr = img.expand(3, -1, -1) if img.shape[0] == 1 else img  # grey -> RGB
            tile = Image.fromarray(np.ascontiguousarray(arr.permute(1, 2, 0).numpy())).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + i * (w + pad), top))
    return canvas


def load_reconstructions(run_dir: str, attack: str, protocol: str) -> dict[str, torch.Tensor]:
    path = os.path.join(run_dir, RESULTS_DIR, f"attack-{attack}-{protocol}.recon.pt")
    if not os.path.isfile(path):
        raise UserError(f"no {attack} reconstructions under protocol {protocol} in {run_dir}; run "
                        f"'splitshield attack {run_dir} --attack {attack} --protocol {protocol}' first")
    return torch.load(path, map_location="cpu", weights_only=True)


def reconstruction_figure(run_dirs: Sequence[str], attacks: Sequence[str], protocol: str, out: str, *,
                          labels: Optional[Sequence[str]] = None, scale: int = 3) -> str:
    """Originals row + one row per (run, attack) for the same fixed test images; writes the PNG ``out``."""
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise UserError(f"got {len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    rows: list[tuple[str, torch.Tensor]] = []
    indices: Optional[torch.Tensor] = None
    for run_dir, run_label in zip(run_dirs, labels):
        for attack in attacks:
            saved = load_reconstructions(run_dir, attack, protocol)
            if indices is None:
                indices = saved["indices"]
                rows.append(("original", saved["original"]))
            elif not torch.equal(indices, saved["indices"]):
                raise UserError(f"{run_dir} shows other test images than {run_dirs[0]} (different dataset or "
                                "attack seed); draw them in separate figures")
            rows.append((f"{run_label} {attack}" if len(run_dirs) > 1 else attack, saved["reconstruction"]))
    if not rows:
        raise UserError("nothing to draw; name at least one run and one attack")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid_image(rows, scale=scale).save(out)
    return out
