"""Tiny image data sets written in powerful-benchmarker's folder layouts, for the runner tests.

Each class is a colour (a hue per class) with per-image noise, so that classes are separable
and a retrieval metric has something to measure; images are ``size`` x ``size`` PNGs.
"""
from __future__ import annotations

import os

import numpy as np

LAYOUTS = ("CUB200", "Cars196", "StanfordOnlineProducts", "ImageFolder")


def _image(rng: np.random.Generator, label: int, size: int):
    from PIL import Image

    base = np.array([(37 * label) % 256, (91 * label + 40) % 256, (151 * label + 80) % 256], dtype=float)
    pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_layout(root: str, layout: str, num_classes: int = 8, per_class: int = 4, size: int = 32,
                 seed: int = 0) -> list[str]:
    """Write ``num_classes * per_class`` PNGs under ``root`` in ``layout``; returns their paths."""
    rng = np.random.default_rng(seed)
    items = [(c, i) for c in range(num_classes) for i in range(per_class)]
    if layout == "CUB200":
        rel = [os.path.join("cub2011", "CUB_200_2011", "images", f"{c + 1:03d}.Bird_{c}", f"b{c}_{i}.png")
               for c, i in items]
    elif layout == "ImageFolder":
        rel = [os.path.join("my_images", f"class_{c}", f"{i}.png") for c, i in items]
    elif layout == "Cars196":
        rel = [os.path.join("cars196", "car_ims", f"{n:06d}.png") for n in range(1, len(items) + 1)]
    elif layout == "StanfordOnlineProducts":
        rel = [os.path.join("Stanford_Online_Products", f"cat{c % 2}_final", f"{c}_{i}.png") for c, i in items]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    paths = [os.path.join(root, r) for r in rel]
    for path, (c, _) in zip(paths, items):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _image(rng, c, size).save(path)
    if layout == "Cars196":
        _write_cars_annotations(os.path.join(root, "cars196"), [r.split(os.sep, 1)[1] for r in rel],
                                [c + 1 for c, _ in items])
    if layout == "StanfordOnlineProducts":
        folder = os.path.join(root, "Stanford_Online_Products")
        rows = [(n + 1, c + 1, c % 2 + 1, r.split(os.sep, 1)[1]) for n, (r, (c, _)) in enumerate(zip(rel, items))]
        half = len(rows) // 2  # train and test files hold different classes, as in SOP
        cut = next(k for k in range(half, len(rows)) if rows[k][1] != rows[k - 1][1])
        for name, part in (("Ebay_train.txt", rows[:cut]), ("Ebay_test.txt", rows[cut:])):
            with open(os.path.join(folder, name), "w") as f:
                f.write("image_id class_id super_class_id path\n")
                f.writelines(f"{a} {b} {s} {p}\n" for a, b, s, p in part)
    return paths


def _write_cars_annotations(folder: str, rel_paths: list[str], classes: list[int]) -> None:
    """``cars_annos.mat`` as the Stanford Cars release stores it: a 1 x N struct array."""
    import scipy.io

    annotations = np.zeros((1, len(rel_paths)), dtype=[("relative_im_path", "O"), ("class", "O")])
    for n, (path, c) in enumerate(zip(rel_paths, classes)):
        annotations[0, n] = (np.array([path]), np.array([[c]], dtype=np.uint8))
    names = np.array([[np.array([f"car model {c}"]) for c in sorted(set(classes))]], dtype=object)
    scipy.io.savemat(os.path.join(folder, "cars_annos.mat"), {"annotations": annotations, "class_names": names})
