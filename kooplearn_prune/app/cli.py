"""Command line: ``kooplearn-prune train | demo | experiment``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded, default), mnist, fashion_mnist or synthetic")
    p.add_argument("--backend", default=None, help="numpy (default) or cupy")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, init and batches")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kooplearn-prune",
        description="Koopman-operator pruning of neural networks (Redman et al., ICLR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an MLP and print loss and test accuracy per epoch")
    _add_common(train)
    train.add_argument("--hidden", type=_positive_int, nargs="+", default=[128],
                       help="hidden layer sizes (default: 128)")
    train.add_argument("--lr", type=float, default=0.05, help="learning rate (SGD)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--save", default=None, help="write the trained weights to this .npz file")

    demo = sub.add_parser("demo",
                          help="the whole story on digits: train, record, KMD, prune, report")
    _add_common(demo)
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")

    exp = sub.add_parser("experiment", help="run a TOML-configured pruning experiment (resumable)")
    exp.add_argument("config", help="path to the experiment's TOML file")
    exp.add_argument("--out", default=None, help="output directory (overrides the config)")
    exp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from ..backend import set_backend
    from ..data import load_dataset
    from ..nn import MLP
    from ..optim import SGD
    from ..training import PrintProgress, Trainer

    epochs = 10 if args.epochs is None else args.epochs
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    if args.save:
        _check_save_path(args.save)  # before training, so that its weights are not lost
    if args.backend:
        set_backend(args.backend)
    data = load_dataset(args.dataset, seed=args.seed)
    if data.task != "classification":
        raise SystemExit("kooplearn-prune train: the dataset must be a classification task")
    sizes = [data.n_features, *args.hidden, data.n_classes]
    model = MLP(sizes, seed=args.seed)
    optimizer = SGD(model, lr=args.lr, momentum=args.momentum)
    print(f"training MLP {'-'.join(map(str, sizes))} on {data.name} "
          f"({data.n_train} train / {data.n_test} test) for {epochs} epochs")
    trainer = Trainer(model, optimizer, callbacks=[PrintProgress()],
                      progress=not args.no_progress)
    history = trainer.fit(data, epochs=epochs, batch_size=args.batch_size, seed=args.seed)
    if len(history):
        print(f"final test accuracy: {100 * history.last()['test_accuracy']:.2f}%")
    if args.save:
        print(f"weights written to {model.save(args.save)}")
    return 0


def _check_save_path(save: str) -> None:
    """``--save PATH`` must name a file in an existing, writable directory (nothing is written)."""
    path = Path(save)
    directory = path.parent
    if path.is_dir():
        raise ValueError(f"--save {path} is a directory; give a file name such as "
                         f"{path / 'weights.npz'}")
    if not directory.is_dir():
        raise ValueError(f"--save {path}: directory {directory} does not exist; create it first "
                         f"or choose another path")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"--save {path}: directory {directory} is not writable; choose another "
                         f"path")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "experiment":
            from .experiment import run_experiment_cli

            return run_experiment_cli(args)
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as err:
        print(f"kooplearn-prune {args.command}: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
