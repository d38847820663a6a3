"""Train on your own images: a folder of images and a folder of label images (or of masks).
Works from a handful of images (random crops and augmentation); a validation split tunes the
clustering and early stopping watches its loss.

    python recipes/train_folder.py --images data/images --labels data/labels --out-dir runs/mine \
        --image-size 128 128 --epochs 30 --early-stopping-patience 5
"""

from _args import run_recipe

if __name__ == "__main__":
    run_recipe("folder", description=__doc__, out_dir="runs/folder", early_stopping_patience=5)
