"""Data: sources of images with instance masks, and tf.data pipelines for `model.fit`.

```python
from keras_pixelembed import data

source = data.from_folder("images/", labels_dir="labels/")      # or from_coco, from_arrays, synthetic
train = data.make_dataset(source, batch_size=8, image_size=(256, 256), augment=True, shuffle=True, seed=0)
model.fit(train, epochs=10)
```
"""

from keras_pixelembed.data.convert import label_map_to_masks, masks_to_label_map
from keras_pixelembed.data.normalize import PercentileNormalized, normalize_percentiles
from keras_pixelembed.data.pipeline import make_dataset
from keras_pixelembed.data.sources import (
    ArraySource,
    CocoSource,
    FolderSource,
    Source,
    Subset,
    SyntheticSource,
    Tiles,
    check_test_source,
    drawn_from,
    from_arrays,
    from_coco,
    from_folder,
    synthetic,
    train_validation_split,
)
from keras_pixelembed.data.volumes import (
    SyntheticVolumes,
    VolumeArrays,
    VolumeBatches,
    VolumeFolder,
    VolumeSource,
    load_volume_pair,
    random_crop_and_flip,
    save_label_volume,
    synthetic_volume,
    synthetic_volumes,
    volumes_from_arrays,
    volumes_from_folder,
)

__all__ = [
    "ArraySource",
    "CocoSource",
    "FolderSource",
    "Source",
    "Subset",
    "PercentileNormalized",
    "SyntheticSource",
    "Tiles",
    "check_test_source",
    "drawn_from",
    "from_arrays",
    "from_coco",
    "from_folder",
    "label_map_to_masks",
    "load_volume_pair",
    "make_dataset",
    "masks_to_label_map",
    "normalize_percentiles",
    "random_crop_and_flip",
    "save_label_volume",
    "synthetic",
    "synthetic_volume",
    "synthetic_volumes",
    "SyntheticVolumes",
    "VolumeArrays",
    "VolumeBatches",
    "VolumeFolder",
    "VolumeSource",
    "volumes_from_arrays",
    "volumes_from_folder",
    "train_validation_split",
]
