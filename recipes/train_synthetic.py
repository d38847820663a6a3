"""Train on the synthetic generator (`--generator randomized`, the default: six object families,
three backgrounds, 8-60 px objects; `--families` / `--backgrounds` choose some; `--generator
classic`: multicolor and touching objects), tune the clustering on validation images, evaluate
against SLIC and Felzenszwalb on held-out images of another seed (randomized: what the run drew;
classic: multicolor objects), save (model.keras, config.json, thresholds.json, metrics.json)
and export.

    python recipes/train_synthetic.py --loss spatial_embedding --out-dir runs/spatial --epochs 20
"""

from _args import run_recipe

if __name__ == "__main__":
    run_recipe("synthetic", description=__doc__, out_dir="runs/synthetic")
