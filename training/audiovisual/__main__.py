"""Preprocess RAVDESS / eNTERFACE'05 and extract frozen-backbone features from the command line:

    python -m training.audiovisual preprocess ravdess
    python -m training.audiovisual preprocess enterface05 --root "/mnt/data/eNTERFACE'05" --workers 8
    python -m training.audiovisual extract-features ravdess --backbone resnet50 --pretrained
    python -m training.audiovisual status

The dataset folders default to $DATA_DIR/ravdess and $DATA_DIR/enterface05 (RAVDESS_DIR and
ENTERFACE05_DIR override them, as for the dashboard); the cache goes to
$DATA_DIR/preprocessed, features to $DATA_DIR/features/<name>.npz. Preprocessing resumes
where an interrupted one stopped. Clips that cannot be used are listed with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..two_view import DatasetError
from . import catalog
from .catalog import VideoOptions
from .discovery import DISCOVER
from .preprocess import PreprocessingFailed, PreprocessingStopped


def _options(args) -> VideoOptions:
    options = VideoOptions.from_env()
    roots = dict(options.roots)
    if getattr(args, "root", None):
        roots[args.dataset] = args.root
    config = dataclasses.replace(options.config, **{k: v for k, v in (("frame_size", args.frame_size),
                                                                      ("n_mels", args.n_mels)) if v is not None})
    return VideoOptions(roots=roots, config=config, workers=args.workers or options.workers)


def build_parser() -> argparse.ArgumentParser:
    from ..__main__ import default_data_dir
    from ..spec import BACKBONES, DEVICES

    parser = argparse.ArgumentParser(prog="python -m training.audiovisual", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the cache and features go (default: $DATA_DIR, else ./var/data)")
    common.add_argument("--frame-size", type=int, help="side of the square frames (default: $VIDEO_FRAME_SIZE or 112)")
    common.add_argument("--n-mels", type=int, help="Mel bands (default: $VIDEO_N_MELS or 64)")
    common.add_argument("--workers", type=int, help="decoding processes (default: every core)")
    for command, help_text in (("preprocess", "decode every clip into the cache"),
                               ("extract-features", "write a features .npz with a frozen backbone")):
        sub = commands.add_parser(command, parents=[common], help=help_text)
        sub.add_argument("dataset", choices=sorted(DISCOVER))
        sub.add_argument("--root", type=Path, help="the dataset's folder (default: $DATA_DIR/<dataset>)")
        if command == "extract-features":
            sub.add_argument("--backbone", choices=BACKBONES, required=True)
            sub.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                             help="ImageNet weights from the torch cache (default: off, random weights)")
            sub.add_argument("--name", help="features dataset name (default: <dataset>-<backbone>-imagenet|random)")
            sub.add_argument("--batch-size", type=int, default=64)
            sub.add_argument("--device", choices=DEVICES, default="auto")
    commands.add_parser("status", parents=[common], help="what is found and what is preprocessed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = _options(args)
    try:
        if args.command == "status":
            for name in DISCOVER:
                root = options.root(name, args.data_dir)
                if not root.is_dir():
                    print(f"{name}: no folder at {root}")
                    continue
                info = catalog.info(name, args.data_dir, options)
                print(f"{name}: {info.error or info.description}")
            return 0
        if args.command == "preprocess":
            report = catalog.ensure_preprocessed(args.dataset, args.data_dir, options, progress_bar=True)
            for failure in report.failed:
                print(f"skipped {failure['video']}: {failure['reason']}")
            print(f"{args.dataset}: {report.n_videos} of {report.n_clips} clips usable, {report.n_segments} segments "
                  f"in {report.cache} ({report.decoded_now} decoded now, {report.seconds:.1f} s)")
            return 0
        from ..encoders import PretrainedWeightsUnavailable
        from .extract import extract_features

        try:
            path = extract_features(args.dataset, args.data_dir, args.backbone, args.pretrained, options, args.name,
                                    args.batch_size, args.device)
        except PretrainedWeightsUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"features written to {path}: train on dataset {path.stem!r} with encoder mlp")
        return 0
    except (DatasetError, PreprocessingFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PreprocessingStopped:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
