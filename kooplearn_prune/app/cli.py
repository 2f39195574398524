"""Command line: ``kooplearn-prune train | demo | experiment``.

Every ``--help`` shows the defaults. Progress bars are drawn only when stderr is a terminal
(``--no-progress`` hides them there too), so a log file gets the per-epoch lines and no bar.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "bundled_config_lines", "progress_wanted"]



class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after each option's help, except for on/off flags and options
    whose help already says what happens when they are left out (default None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if isinstance(action.default, bool) or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


_HELP = _Help


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded, no download), mnist, fashion_mnist or synthetic")
    p.add_argument("--backend", default=None,
                   help="numpy or cupy (None: $KOOPLEARN_PRUNE_BACKEND, else numpy)")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, init and batches")
    _add_progress(p)


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (they are only drawn when stderr is a terminal)")


def progress_wanted(no_progress: bool, stream: object = None) -> bool:
    """Draw progress bars? Only on a terminal, and not when ``--no-progress`` was given: in a
    log file a bar's carriage returns would interleave with the per-epoch lines."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not no_progress and callable(isatty) and bool(isatty())


def bundled_config_lines() -> list[str]:
    """``name  what it runs`` for each config shipped in ``app/configs/``, read from the file."""
    from .experiment_config import bundled_configs, load_config

    lines = []
    for name, path in bundled_configs().items():
        try:
            c = load_config(path)
            model = (f"{c.model_name} (torch)" if getattr(c, "framework", "native") == "torch"
                     else "MLP, hidden " + "-".join(map(str, c.hidden)))
            what = (f"{model} on {c.dataset}, {len(c.seeds)} seed(s), {c.epochs} epochs, momentum "
                    f"{c.momentum:g}, a snapshot every {c.every} step(s), windows ending at epochs "
                    f"{', '.join(map(str, c.window_epochs))}; {', '.join(c.methods)}")
        except Exception as err:  # a broken bundled file must not break --help
            what = f"(cannot be read: {err})"
        lines.append(f"  {name:<24} {what}")
    return lines


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kooplearn-prune", formatter_class=_HELP,
        description="Koopman-operator pruning of neural networks (Redman et al., ICLR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", formatter_class=_HELP,
                           help="train an MLP and print loss and test accuracy per epoch")
    _add_common(train)
    train.add_argument("--epochs", type=int, default=10, help="training epochs")
    train.add_argument("--hidden", type=_positive_int, nargs="+", default=[128],
                       help="hidden layer sizes")
    train.add_argument("--lr", type=float, default=0.05, help="learning rate (SGD)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="mini-batch size")
    train.add_argument("--save", default=None, help="write the trained weights to this .npz file")

    demo = sub.add_parser("demo", formatter_class=_HELP,
                          help="the whole story on digits: train, record, KMD, prune, report")
    _add_common(demo)
    demo.add_argument("--epochs", type=int, default=20,
                      help="training epochs (at least 2: the demo compares training windows)")
    demo.add_argument("--out", default="demo_out", help="output directory")

    configs = "\n".join(bundled_config_lines())
    exp = sub.add_parser(
        "experiment", formatter_class=_HELP,
        help="run a TOML-configured pruning experiment (resumable)",
        description="Run a TOML-configured pruning experiment (resumable).",
        epilog=f"bundled configs (name them without a path, e.g. "
               f"'kooplearn-prune experiment quick'):\n{configs}")
    exp.add_argument("config", nargs="?", default=None,
                     help="the experiment's TOML file, or the name of a bundled config")
    exp.add_argument("--out", default=None,
                     help="output directory (default: the config's [experiment] out, else "
                          "results/<name>)")
    exp.add_argument("--list", action="store_true",
                     help="list the bundled configs and exit")
    _add_progress(exp)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..backend import set_backend
    from ..data import load_dataset
    from ..nn import MLP
    from ..optim import SGD
    from ..training import PrintProgress, Trainer

    epochs = args.epochs
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
    trainer = Trainer(model, optimizer, callbacks=[PrintProgress(printer=tqdm.write)],
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
    args.no_progress = not progress_wanted(args.no_progress)
    if args.command == "experiment" and args.list:
        print("bundled configs (kooplearn-prune experiment NAME [--out DIR]):")
        print("\n".join(bundled_config_lines()))
        return 0
    if args.command == "experiment" and args.config is None:
        parser.error("experiment: give a config (a TOML file or a bundled name; see --list)")
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
