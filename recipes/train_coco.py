"""Train on COCO-style instance annotations (polygons or RLE; iscrowd regions are ignored).

python recipes/train_coco.py --annotations instances.json --images images/ --out-dir runs/coco
"""

from _args import run_recipe

if __name__ == "__main__":
    run_recipe("coco", description=__doc__, out_dir="runs/coco", early_stopping_patience=5)
