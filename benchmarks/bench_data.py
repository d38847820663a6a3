"""Images per second of `make_dataset` with augmentation at 256 x 256, from a folder of PNGs and
from `synthetic`, next to the training step of a small model on the same batches (the pipeline
must keep ahead of it). One run, side by side.

    KERAS_BACKEND=tensorflow python benchmarks/bench_data.py [--images 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def write_folder(folder: str, n: int, size: int) -> None:
    from PIL import Image

    from keras_pixelembed import data

    source = data.synthetic(n, (size, size), seed=0)
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "labels"))
    for i in range(n):
        image, masks, _ = source.load(i)
        Image.fromarray((image * 255).astype(np.uint8)).save(os.path.join(folder, "images", f"{i:04d}.png"))
        labels = data.masks_to_label_map(masks).astype(np.uint16)
        Image.fromarray(labels).save(os.path.join(folder, "labels", f"{i:04d}.png"))


def tiny_embedder(embedding_dim: int = 8, width: int = 16):
    """A five-layer dilated conv net: about the smallest model anyone would train."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = inputs
    for rate in (1, 2, 4, 8, 1):
        x = keras.layers.Conv2D(width, 3, padding="same", dilation_rate=rate, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(embedding_dim, 1)(x))


def images_per_second(ds, n_batches: int) -> float:
    it = iter(ds)
    next(it)  # warm-up
    start, count = time.perf_counter(), 0
    for _ in range(n_batches):
        x, _ = next(it)
        count += int(x.shape[0])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16)
    args = parser.parse_args()

    import keras

    from keras_pixelembed import DiscriminativeLoss, data

    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(tmp, args.images, args.size)
        folder = data.from_folder(os.path.join(tmp, "images"), labels_dir=os.path.join(tmp, "labels"))
        rows = []
        for name, source in (("folder (PNG)", folder), ("synthetic", data.synthetic(args.images, size, seed=1))):
            for augment in (False, True):
                ds = data.make_dataset(
                    source, args.batch, image_size=size, augment=augment, shuffle=True, repeat=True, seed=0
                )
                rows.append((name, augment, images_per_second(ds, args.batches)))
        ds = (
            data.make_dataset(folder, args.batch, image_size=size, augment=True, repeat=True, seed=0)
            .take(1)
            .cache()
            .repeat()
        )
        model = tiny_embedder()
        model.compile(optimizer="adam", loss=DiscriminativeLoss())
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=args.batches, epochs=1, verbose=0)
        step_rate = args.batches * args.batch / (time.perf_counter() - start)
    print(f"backend={keras.backend.backend()} {args.size}x{args.size}, batch {args.batch}, {os.cpu_count()} CPUs")
    print("| source | augment | images/s |")
    print("|---|---|---|")
    for name, augment, rate in rows:
        print(f"| {name} | {'yes' if augment else 'no'} | {rate:.0f} |")
    print(f"| training step of a 5-layer dilated embedder (DiscriminativeLoss), cached batch | - | {step_rate:.0f} |")


if __name__ == "__main__":
    main()
