"""Train one spec from the command line, with a progress bar:

    python -m training --dataset digits --method mle --missing-modality bottom --missing-rate 0.9

Every field of `TrainSpec` is an option (`--help` lists them with their defaults).
`--list-datasets` shows what can be trained on (features files are read from `--data-dir`).
`--json` prints the result as JSON on stdout instead of a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from .datasets import dataset_infos
from .spec import TrainSpec


def _option_type(annotation):
    if annotation in (int, float, str):
        return annotation
    args = typing.get_args(annotation)
    if args and all(isinstance(a, str) for a in args):  # a Literal of strings
        return str
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in TrainSpec.model_fields.items():
        literal_choices = typing.get_args(field.annotation)
        option = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=field.default,
                                help=(field.description or "") + f" (default: {field.default})")
            continue
        if name == "method_options":  # a JSON object: --method-options '{"drop_rate": 0.3}'
            parser.add_argument(option, dest=name, type=json.loads, default={}, help=field.description or "")
            continue
        kwargs: dict = {"dest": name, "type": _option_type(field.annotation), "help": field.description or ""}
        if literal_choices and all(isinstance(c, str) for c in literal_choices):
            kwargs["choices"] = literal_choices
        if field.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
            kwargs["help"] += f" (default: {field.default})"
        parser.add_argument(option, **kwargs)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where features/*.npz datasets live (default: $DATA_DIR, else ./var/data)")
    parser.add_argument("--list-datasets", action="store_true", help="list the datasets and exit")
    parser.epilog = ("RAVDESS and eNTERFACE'05 are read from $DATA_DIR/ravdess and $DATA_DIR/enterface05 (or "
                     "$RAVDESS_DIR, $ENTERFACE05_DIR) and preprocessed on first use with $VIDEO_FRAME_SIZE and "
                     "$VIDEO_N_MELS, as by the dashboard.")
    return parser


def default_data_dir() -> Path:
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    return Path(os.environ.get("VAR_DIR", "var")) / "data"


def video_options():
    from .audiovisual.catalog import VideoOptions

    return VideoOptions.from_env()


def list_datasets(data_dir: Path) -> None:
    for info in dataset_infos(data_dir, video_options()):
        if info.error:
            print(f"{info.name}: cannot be used: {info.error}")
        else:
            print(f"{info.name}: modalities {', '.join(info.modalities)}; {len(info.classes)} classes; "
                  f"{info.n_samples} samples")


class ProgressBar:
    """A tqdm bar over epochs showing the latest metrics."""

    def __init__(self, epochs: int, enabled: bool = True):
        self.bar = tqdm(total=epochs, unit="epoch", disable=not enabled, file=sys.stderr)

    def on_start(self, info):
        tqdm.write(f"reference set: {info['reference_set']}; train {info['n_train']} "
                       f"({info['n_train_complete']} complete), val {info['n_val']}, test {info['n_test']}", file=sys.stderr)

    def on_stage_progress(self, stage, done, total, details):
        self.bar.set_description(f"{stage} {done}/{total} clips", refresh=True)

    def on_stage_epoch(self, stage, epoch, metrics):
        self.bar.set_description(f"{stage} epoch {epoch}", refresh=False)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})

    def on_epoch_end(self, epoch, metrics):
        self.bar.set_description("", refresh=False)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
        self.bar.update(1)

    def should_stop(self):
        return False

    def close(self):
        self.bar.close()

    def should_abort(self) -> bool:  # the loop asks it at every step (a TrainingCallback hook)
        return False


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--list-datasets" in argv:
        listing = argparse.ArgumentParser(add_help=False)
        listing.add_argument("--data-dir", type=Path, default=default_data_dir())
        list_datasets(listing.parse_known_args(argv)[0].data_dir)
        return 0
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json")
    data_dir = args.pop("data_dir")
    args.pop("list_datasets")
    try:
        spec = TrainSpec(**args)
    except ValidationError as error:
        print(error, file=sys.stderr)
        return 2

    from .train import SpecError, train  # torch is imported only once the spec is valid

    progress = ProgressBar(spec.epochs)
    try:
        result = train(spec, progress, data_dir=data_dir, video=video_options())
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    if as_json:
        # `cancelled` (stopped early, for any reason) as well as `stopped`: scripts written before
        # the stop reason read it.
        print(json.dumps({**asdict(result), "cancelled": result.stopped_early}, indent=2))
    else:
        if result.test_accuracy is None:
            print("stopped before the first epoch")
        else:
            print(f"test accuracy {result.test_accuracy:.4f} at epoch {result.best_epoch} "
                  f"(validation {result.val_accuracy:.4f}); {result.info['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
