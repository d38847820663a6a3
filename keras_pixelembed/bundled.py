"""The small trained models that ship with the package (`keras_pixelembed/saved_models/`)."""

from __future__ import annotations

import os

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_models")


def bundled_models() -> list[str]:
    """Names of the bundled model directories."""
    if not os.path.isdir(BUNDLED_DIR):
        return []
    return sorted(n for n in os.listdir(BUNDLED_DIR) if os.path.isfile(os.path.join(BUNDLED_DIR, n, "model.keras")))


def default_model_path() -> str:
    """The directory of the default bundled model (named in `saved_models/DEFAULT`)."""
    marker = os.path.join(BUNDLED_DIR, "DEFAULT")
    if os.path.isfile(marker):
        with open(marker) as f:
            name = f.read().strip()
        path = os.path.join(BUNDLED_DIR, name)
        if os.path.isfile(os.path.join(path, "model.keras")):
            return path
    raise FileNotFoundError(f"No default bundled model in {BUNDLED_DIR}; give --model PATH")


def resolve_model(path: str | None) -> str:
    """`path`, the name of a bundled model, or (None) the default bundled model."""
    if path is None:
        return default_model_path()
    if not os.path.exists(path) and os.path.isdir(os.path.join(BUNDLED_DIR, path)):
        return os.path.join(BUNDLED_DIR, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model: {path} (bundled: {', '.join(bundled_models()) or 'none'})")
    return path
