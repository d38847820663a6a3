"""The `pixelembed` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import keras

    from keras_pixelembed.demo import run_demo

    print(f"keras-pixelembed demo on the {keras.backend.backend()} backend: a tiny network, "
          "DiscriminativeLoss, one synthetic batch of two-colored objects")
    losses = run_demo(steps=args.steps, seed=args.seed)
    first, last = losses[0], min(losses[-5:])
    print(f"loss {first:.4f} -> {last:.4f} ({100 * (first - last) / first:.0f}% lower)")
    return 0 if last < first else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelembed", description="Pixel embeddings for segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a tiny model on a synthetic batch and print the loss going down")
    demo.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) < 1:
        print(f"pixelembed: error: --steps must be >= 1, received {args.steps}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
