"""splitshield prepare tinyimagenet|facescrub --src SRC [--dest DIR]."""
from __future__ import annotations

import argparse


def _prepare(args: argparse.Namespace) -> int:
    from splitshield.data.base import cache_dir
    from splitshield.data.prepare import prepare_facescrub, prepare_tinyimagenet

    # The default destination is where the loader looks first, so no data.root is needed afterwards.
    dest = args.dest or cache_dir(args.dataset)
    if args.dataset == "tinyimagenet":
        report = prepare_tinyimagenet(args.src, dest, link=not args.copy)
    else:
        report = prepare_facescrub(args.src, dest, seed=args.seed)
    print(report.summary())
    hint = "" if not args.dest else f" --set data.root={report.dest}"
    print(f"use it with: --set data.name={args.dataset}{hint}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert a downloaded TinyImageNet or FaceScrub into the layout the loaders "
                                       "read (DEST/train/<class>/, DEST/test/<class>/)")
    p.add_argument("dataset", choices=["tinyimagenet", "facescrub"])
    p.add_argument("--src", required=True,
                   help="tinyimagenet: the tiny-imagenet-200 folder or .zip; facescrub: the folder of per-person "
                        "folders (optionally under actors/ and actresses/)")
    p.add_argument("--dest", help="output folder (default $SPLITSHIELD_DATA/<dataset> or "
                                  "~/.cache/splitshield/<dataset>, where the loader looks)")
    p.add_argument("--copy", action="store_true", help="tinyimagenet from a folder: copy instead of hard-linking")
    p.add_argument("--seed", type=int, default=0, help="facescrub: seed of the per-identity 80/20 split")
    p.set_defaults(handler=_prepare)
