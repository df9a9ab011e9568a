"""``polyhead data synth | photos``: write a synthetic data set or the real-photo task (:mod:`transfer.data`)."""

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


def _cmd_photos(args: argparse.Namespace) -> int:
    from transfer.data.photo_task import CLASSES, generate_photo_task

    s = generate_photo_task(args.out, task=args.task, seed=args.seed, num_train=args.num_train,
                            num_val=args.num_val, image_size=args.image_size)
    print(f"wrote task {s.task!r}: {s.num_train} train / {s.num_val} val images of real photographed objects "
          f"({', '.join(CLASSES)}), {s.num_objects} objects, in {s.seconds:.1f} s")
    print(f"  {s.train_json}  {s.val_json}  images under {s.images_dir}")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``data`` and its subcommands ``synth`` and ``photos`` to the ``polyhead`` subcommands.

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
    ph = data.add_parser("photos", help="write a detection task of real photographed objects (scikit-image's photos)")
    ph.add_argument("--out", required=True, help="data root (images/<task>/ and <task>/{train,val}.json)")
    ph.add_argument("--task", default="photos")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--num-train", type=int, default=400)
    ph.add_argument("--num-val", type=int, default=100)
    ph.add_argument("--image-size", type=int, default=320)
    ph.set_defaults(func=_cmd_photos)
