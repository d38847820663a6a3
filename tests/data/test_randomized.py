"""The domain-randomized synthetic generator (`data.synthetic(..., generator="randomized")`)."""

from __future__ import annotations

import numpy as np
import pytest

from keras_pixelembed import data
from keras_pixelembed.data.synthetic import BACKGROUNDS, DIAMETER, OBJECT_FAMILIES, randomized_scene


def _extent(mask):
    ys, xs = np.nonzero(mask)
    return max(ys.max() - ys.min(), xs.max() - xs.min()) + 1


def test_each_family_and_background_alone_gives_valid_scenes():
    for name in OBJECT_FAMILIES + BACKGROUNDS:
        which = {"families": (name,)} if name in OBJECT_FAMILIES else {"backgrounds": (name,)}
        source = data.synthetic(3, (64, 80), seed=3, generator="randomized", **which)
        for i in range(3):
            image, masks, ignore = source.load(i)
            assert image.dtype == np.float32 and image.shape == (64, 80, 3), name
            assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, name
            assert masks.dtype == np.uint8 and masks.shape[1:] == (64, 80) and not ignore.any()
            assert np.all(masks.sum(0) <= 1), name  # visible parts do not overlap
            assert np.all(masks.reshape(len(masks), -1).sum(1) >= 12), name  # no crumbs
        assert sum(len(source.load(i)[1]) for i in range(3)) >= 3, name


def test_it_is_deterministic_per_image_and_differs_from_the_classic_generator():
    a = data.synthetic(4, (48, 48), seed=7, generator="randomized")
    b = data.synthetic(6, (48, 48), seed=7, generator="randomized")
    for i in (0, 3):  # image i depends on (seed, i) only
        np.testing.assert_array_equal(a.load(i)[0], b.load(i)[0])
        np.testing.assert_array_equal(a.load(i)[1], b.load(i)[1])
    assert not np.array_equal(a.load(0)[0], data.synthetic(1, (48, 48), seed=7).load(0)[0])


def test_objects_span_the_diameter_range_and_colour_and_grey_both_occur():
    rng_images = [randomized_scene(np.random.default_rng([11, i]), (160, 160)) for i in range(40)]
    extents = [_extent(m) for _, masks in rng_images for m in masks]
    assert max(extents) <= DIAMETER[1] + 2  # a visible part is never larger than its object
    assert min(extents) <= 12 and max(extents) >= 45
    grey = [
        np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 1], image[..., 2])
        for image, _ in rng_images
    ]
    assert 0 < sum(grey) < len(grey)
    image, _ = randomized_scene(np.random.default_rng(0), (32, 32), grey=1.0)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_objects_stand_out_from_what_they_cover():
    """Every family paints objects that differ from the background around them (a model can see them)."""
    for family in OBJECT_FAMILIES:
        image, masks = randomized_scene(np.random.default_rng([5, 1]), (96, 96), families=(family,), grey=0.0)
        labels = data.masks_to_label_map(masks)
        background = image[labels == 0].mean(0)
        contrast = [np.abs(image[m > 0].mean(0) - background).max() for m in masks]
        assert np.median(contrast) > 0.05, family


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"generator": "fractal"}, "generator"),
        ({"generator": "randomized", "families": ("multicolor",)}, "families"),
        ({"generator": "randomized", "families": ()}, "families"),
        ({"generator": "randomized", "backgrounds": ("sky",)}, "backgrounds"),
        ({"backgrounds": ("noise",)}, "backgrounds"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        data.synthetic(2, (32, 32), **kwargs)


def test_what_a_run_draws_and_is_tested_on():
    from keras_pixelembed.training import TrainConfig

    randomized = TrainConfig(generator="randomized", families=("flat",), backgrounds=("photo",))
    expected = dict(generator="randomized", families=("flat",), backgrounds=("photo",))
    assert randomized.synthetic_kwargs() == randomized.synthetic_kwargs(held_out=True) == expected
    classic = TrainConfig(generator="classic", families=("touching",))
    assert classic.synthetic_kwargs() == dict(generator="classic", families=("touching",), backgrounds=None)
    assert classic.synthetic_kwargs(held_out=True) == dict(families=("multicolor",))
    # a config.json written before the generator existed reads as classic
    assert data.drawn_from({"families": None}) == dict(generator="classic", families=None, backgrounds=None)
    assert data.drawn_from({"generator": "randomized"}, held_out=True)["generator"] == "randomized"
