"""Train on the synthetic generator (multicolor and touching objects), tune the clustering on
held-out images, evaluate against SLIC and Felzenszwalb on multicolor objects of another seed,
save (model.keras, config.json, thresholds.json, metrics.json) and export.

    python recipes/train_synthetic.py --loss spatial_embedding --out-dir runs/spatial --epochs 20
"""

from _args import run_recipe

if __name__ == "__main__":
    run_recipe("synthetic", description=__doc__, out_dir="runs/synthetic")
