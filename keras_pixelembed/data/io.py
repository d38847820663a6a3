"""Reading images and label images, with errors that name the file."""

from __future__ import annotations

import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _require_pillow():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is a dependency
        raise ImportError("Reading images needs Pillow: pip install pillow") from error
    return Image


# Pillow modes whose arrays are not intensities: converted to RGB for images.
_COLOR_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def read_array(path: str, palette_colors: bool = False) -> np.ndarray:
    """The raw pixel array of an image file (TIFF through tifffile when Pillow cannot).

    A palette image ("P") gives its indices (label images are often saved so), or with
    `palette_colors` its colours (RGB, RGBA when the palette has transparency); CMYK, YCbCr,
    LAB and HSV images are converted to RGB then too."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path}")
    if path.lower().endswith((".tif", ".tiff")):
        try:  # Pillow reads 16-bit RGB TIFF as 8 bit: tifffile keeps every bit
            import tifffile

            return np.asarray(tifffile.imread(path))
        except ImportError:
            pass
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"Cannot read image file {path}: {error}") from error
    Image = _require_pillow()
    try:
        with Image.open(path) as img:
            img.load()
            if palette_colors and img.mode in _COLOR_MODES:
                transparent = "transparency" in img.info or img.mode == "PA"
                return np.asarray(img.convert("RGBA" if transparent else "RGB"))
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(img).astype(np.uint16)
            return np.asarray(img)
    except Exception as error:  # noqa: BLE001 - any decoder error means the file is unreadable
        raise ValueError(f"Cannot read image file {path}: {error}") from error


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    Image = _require_pillow()
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception as error:  # noqa: BLE001
        if path.lower().endswith((".tif", ".tiff")):
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    shape = tif.pages[0].shape
                return int(shape[0]), int(shape[1])
            except Exception:  # noqa: BLE001
                pass
        raise ValueError(f"Cannot read image file {path}: {error}") from error


def to_rgb_float(array: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Grayscale, RGB or RGBA, 8 or 16 bit (or float in [0, 1]) -> float32 RGB in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"Image {path} has shape {a.shape}; expected (h, w), (h, w, 1), (h, w, 3) or (h, w, 4)")
    if a.shape[-1] == 2:  # gray + alpha
        a = a[..., :1]
    if a.shape[-1] == 4:  # RGBA: drop alpha
        a = a[..., :3]
    if a.dtype == np.uint8:
        out = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        out = a.astype(np.float32) / 65535.0
    elif a.dtype == bool:
        out = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        out = a.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"Image {path} holds NaN or infinite values")
        if out.min() < 0 or out.max() > 1:
            raise ValueError(f"Float image {path} has values in [{out.min()}, {out.max()}]; expected [0, 1]")
    elif np.issubdtype(a.dtype, np.integer):
        top = float(np.iinfo(a.dtype).max)
        out = np.clip(a.astype(np.float32) / top, 0, 1)
    else:
        raise ValueError(f"Image {path} has unsupported dtype {a.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def read_image(path: str) -> np.ndarray:
    """An image file as `(h, w, 3)` float32 in [0, 1].

    PNG, JPEG, TIFF and BMP; gray (repeated to three channels), RGB or RGBA (alpha dropped);
    8-bit values are divided by 255, 16-bit ones by 65535 (16-bit TIFF is read with tifffile
    when it is installed, since Pillow truncates 16-bit RGB TIFF); palette ("P") images give
    their colours, not their indices. Raises `FileNotFoundError` or `ValueError` naming the file.
    """
    return to_rgb_float(read_array(path, palette_colors=True), path)


def read_label_image(path: str) -> np.ndarray:
    """An integer label image `(h, w)`: 0 background, k >= 1 instance k (negative: ignored)."""
    a = read_array(path)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(
            f"Label image {path} has shape {a.shape}; expected one integer channel (h, w). "
            "Color-coded labels must be converted to integer ids first."
        )
    if a.dtype == bool:
        return a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"Label image {path} holds {a.dtype} values; expected integer instance ids")
    return a.astype(np.int64)


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No such folder: {folder}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
