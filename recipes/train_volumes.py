"""Train a 3D U-Net on volumes, then tune the clustering, evaluate against 3D SLIC and export.
The first argument picks the data: `folder` (TIFF stacks `(z, y, x)` or `(z, y, x, c)` with label
stacks of the same stem) or `synthetic` (textured, touching ellipsoids, `data.SyntheticVolumes`).

    python recipes/train_volumes.py folder --images vols/images --labels vols/labels \
        --test-images held/images --test-labels held/labels --z-spacing 2 --out-dir runs/vols
    python recipes/train_volumes.py synthetic --train-images 64 --out-dir runs/synthetic_volumes

Defaults: crops of 16 x 48 x 48 voxels (--image-size D H W), a width-8 U-Net of depth 2, batches
of 2, 10 epochs of 80 steps (about 11 minutes on a 2-core CPU). Set --z-spacing to your slice
spacing over your pixel spacing (the synthetic volumes use 2).
"""

import sys

from _args import run_recipe

DEFAULTS = dict(ndim=3, image_size=(16, 48, 48), width=8, depth=2, batch_size=2, epochs=10, steps_per_epoch=80)
DEFAULTS.update(max_instances=32, validation_images=4, test_images=8)

if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind not in ("folder", "synthetic"):
        sys.exit(f"usage: {sys.argv[0]} folder|synthetic [flags] (--help after it lists them)\n\n{__doc__}")
    spacing = {"z_spacing": 2.0} if kind == "synthetic" else {}
    run_recipe(kind, sys.argv[2:], description=__doc__, out_dir=f"runs/{kind}_volumes", **DEFAULTS, **spacing)
