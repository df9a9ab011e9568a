"""``polyhead data synth``: write a synthetic data set (:func:`transfer.data.synth.generate`)."""

from __future__ import annotations

import argparse

from serving.cli.options import Subparsers


def _cmd_synth(args: argparse.Namespace) -> int:
    from transfer.data.synth import generate

    s = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                 num_unlabeled=args.num_unlabeled, image_size=args.image_size)
    print(f"wrote {s.num_train} train / {s.num_val} val / {s.num_unlabeled} unlabelled images to {s.out_dir} "
          f"in {s.seconds:.1f} s")
    for task in s.tasks:
        print(f"  {task:10s} classes={','.join(s.classes[task])}  objects={s.num_objects[task]}  {s.train_json[task]}")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``data`` and its subcommand ``synth`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write a synthetic multi-task COCO data set")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-train", type=int, default=600)
    s.add_argument("--num-val", type=int, default=150)
    s.add_argument("--num-unlabeled", type=int, default=0)
    s.add_argument("--image-size", type=int, default=256)
    s.set_defaults(func=_cmd_synth)
