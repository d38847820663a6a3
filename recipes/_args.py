"""Lets the recipes import the package from a checkout without installing it."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_pixelembed.cli import add_config_arguments, config_from_args, run_recipe  # noqa: E402

__all__ = ["add_config_arguments", "config_from_args", "run_recipe"]
