"""The first step of debugging any loss: overfit one image with one mask, then all its
masks, then a few images, then more; print how far each stage gets (loss and, after
clustering, the symmetric best Dice over the labelled objects). A stage that does not get near
zero points at the loss, the head or the clustering before any real data is involved.

    python recipes/overfit_one_image.py --loss spatial_embedding --steps 150
"""

from __future__ import annotations

import argparse
import os

from _args import add_config_arguments, config_from_args  # noqa: F401  (puts the package on sys.path)

from keras_pixelembed.training import LOSSES


def stages(n_images: int):
    yield "1 image, 1 mask", 1, 1
    yield "1 image, all masks", 1, None
    yield f"{max(2, n_images // 4)} images", max(2, n_images // 4), None
    yield f"{n_images} images", n_images, None


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="spatial_embedding", choices=LOSSES)
    parser.add_argument("--steps", type=int, default=150, help="training steps per stage")
    parser.add_argument("--images", type=int, default=8, help="images of the last stage")
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 64))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from keras_pixelembed import data
    from keras_pixelembed.evaluation import object_sbd, tune_thresholds
    from keras_pixelembed.run_dir import write_json
    from keras_pixelembed.segmenter import Segmenter
    from keras_pixelembed.training import TrainConfig, make_loss, make_model

    config = TrainConfig(
        loss=args.loss,
        width=args.width,
        image_size=tuple(args.image_size),
        max_instances=16,
        seed=args.seed,
        learning_rate=args.learning_rate,
        out_dir=args.out_dir or "runs/overfit",
    )
    source = data.synthetic(args.images, config.image_size, seed=args.seed, n_objects=(3, 5))
    results = []
    for name, n_images, n_masks in stages(args.images):
        keras.utils.set_random_seed(args.seed)
        images, labels = [], []
        for i in range(n_images):
            image, masks, _ = source.load(i)
            masks = masks[:n_masks] if n_masks else masks
            images.append(image)
            labels.append(data.masks_to_label_map(masks))
        x, y = np.stack(images), np.stack(labels)
        model = make_model(config)
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=make_loss(config))
        history = model.fit(
            x, y, batch_size=min(8, n_images), epochs=args.steps * min(8, n_images) // n_images, verbose=0
        ).history["loss"]
        segmenter = Segmenter(model, head=config.head, multiple=config.multiple)
        outputs = [segmenter.predict(im) for im in images]
        _, sbd = tune_thresholds(segmenter, outputs, labels, metric=object_sbd)
        row = {"stage": name, "first_loss": history[0], "last_loss": history[-1], "object_sbd": sbd}
        results.append(row)
        print(f"{name:>20}: loss {row['first_loss']:.4f} -> {row['last_loss']:.4f}   object SBD {sbd:.3f}", flush=True)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        write_json(os.path.join(args.out_dir, "overfit.json"), results)
    return results


if __name__ == "__main__":
    main()
