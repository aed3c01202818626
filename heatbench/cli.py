"""Command line: ``python -m heatbench {run,evaluate,data,list,floor,profile,merge,report,heatmap} ...`` (also installed as ``heatbench``).

User errors (a bad flag value, an unknown name, an unreadable file) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import allocator, registry
from .data.synthetic import SYNTHETIC_SYNTAX
from .errors import HeatbenchError
from .parsing import parse_overrides, parse_resolutions
from .representation import ConfigError


def _add_run(commands) -> None:
    parser = commands.add_parser("run", help="train and evaluate representations; write a comparison table")
    parser.add_argument("--repr", required=True, help="'all' or comma-separated names (see `heatbench list`)")
    parser.add_argument("--res", default="64", help="input sizes, N or HxW, comma-separated (default 64)")
    parser.add_argument("--data", default="default",
                        help="'default' (the embedded mirror-mouse set), a DeepLabCut config.yaml, .h5 or .csv, "
                             f"a COCO/MPII JSON, or the rendered set {SYNTHETIC_SYNTAX}")
    parser.add_argument("--image-root", help="image folder for --data (default: the annotation file's folder; "
                                             "COCO files also look in the common layouts)")
    _add_split(parser)
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument("--epochs", type=int, help="training epochs (default: the TrainConfig default)")
    schedule.add_argument("--steps", type=int, help="at least N optimizer steps: the fewest whole epochs of the "
                                                    "training set that hold them (instead of --epochs)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--eval-every", type=int,
                        help="validate every N epochs for the learning curves (default: the TrainConfig default)")
    parser.add_argument("--precision", choices=("auto", "bf16", "float32"),
                        help="training forward: auto (bf16 on CUDA and on CPUs with bf16 units, else float32), "
                             "bf16 or float32; evaluation is always float32")
    parser.add_argument("--seeds", type=int, default=1, help="runs per representation x resolution (seeds 0..N-1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--backbone", type=int, choices=(18, 50), help="ResNet depth (default 18)")
    parser.add_argument("--pretrained", help="local torchvision-format ResNet checkpoint for the backbone")
    parser.add_argument("--set", action="append", default=[], metavar="REPR.FIELD=VALUE",
                        help="override one config field of one representation, e.g. heatmap.decoder=argmax")
    parser.add_argument("--no-flip-test", action="store_true", help="evaluate without the flip test")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results root (default results/)")
    parser.add_argument("--name", help="run name (default: the representations and sizes)")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--resume", action="store_true", help="continue each run from its last checkpoint")
    parser.add_argument("--shard", metavar="I/N", help="run only every N-th job starting at I (merge with `merge`)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_split(parser) -> None:
    parser.add_argument("--val-data", help="a second annotation file to validate on (then no split is drawn)")
    parser.add_argument("--val-image-root", help="image folder for --val-data")
    parser.add_argument("--val-fraction", type=float, help="share of --data's images to validate on (default 0.2)")
    parser.add_argument("--split-seed", type=int, help="seed of the random split by image (default 0)")
    parser.add_argument("--split", type=Path, metavar="FILE",
                        help="re-use the split stored in a run's results.json (or a JSON with train_images and "
                             "val_images)")


def _split_spec(args):
    from .splits import SplitSpec

    return SplitSpec(val_data=args.val_data, val_image_root=args.val_image_root, val_fraction=args.val_fraction,
                     seed=args.split_seed, split_file=args.split)


def _run(args) -> None:
    import dataclasses

    from .runner import RunSpec, run
    from .train import TrainConfig

    names = _names(args.repr)
    changes = {"epochs": args.epochs, "batch_size": args.batch_size, "backbone_depth": args.backbone,
               "pretrained": args.pretrained, "eval_every": args.eval_every, "precision": args.precision}
    train = dataclasses.replace(TrainConfig(), flip_test=not args.no_flip_test,
                                **{key: value for key, value in changes.items() if value is not None})
    if args.seeds < 1:
        raise HeatbenchError(f"--seeds {args.seeds}: must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise HeatbenchError(f"--steps {args.steps}: must be >= 1")
    run(RunSpec(representations=names, resolutions=parse_resolutions(args.res), data=args.data,
                image_root=args.image_root, split=_split_spec(args), seeds=args.seeds, first_seed=args.seed,
                device=args.device, out=args.out, name=args.name, overrides=parse_overrides(args.set, names),
                train=train, steps=args.steps, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                progress=not args.quiet),
        shard=args.shard)


def _list(args) -> None:
    for name, origin in registry.origins().items():
        print(f"{name:<12} {origin}")


def _add_floor(commands) -> None:
    parser = commands.add_parser("floor", help="the codec-floor table: decode(ideal outputs) error, no training")
    parser.add_argument("--repr", default="all", help="'all' or comma-separated names")
    parser.add_argument("--res", default="64,128,256x192", help="input sizes (default 64,128,256x192)")
    parser.add_argument("--n", type=int, default=2000, help="random keypoints per region")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/floor"))


def _floor(args) -> None:
    from . import floor

    names = _names(args.repr)
    if args.n < 1:
        raise HeatbenchError(f"--n {args.n}: must be >= 1")
    rows = floor.floor_rows(names, parse_resolutions(args.res), n=args.n, seed=args.seed)
    print(floor.write_floor_table(rows, args.out))


def _add_merge(commands) -> None:
    parser = commands.add_parser("merge", help="combine run directories (e.g. --shard jobs) into one table")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the merged run directory to write")


def _merge(args) -> None:
    from .runner import merge

    print(merge(args.directories, args.out))


def _add_report(commands) -> None:
    parser = commands.add_parser("report", help="report.md with figures and paired comparisons for run directories")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="where to write (default: the directory, when only one is given)")
    parser.add_argument("--real", nargs="+", type=Path, default=[], metavar="DIR",
                        help="runs on real data, e.g. beside runs on the rendered set: drawn in the error budget "
                             "as each representation's error on real labels (they join no table)")


def _report(args) -> None:
    from .report import write_report

    if args.out is None and len(args.directories) > 1:
        raise HeatbenchError("report: --out is required with several directories")
    print(write_report(args.directories, args.out or args.directories[0], args.real))


def _add_heatmap(commands) -> None:
    parser = commands.add_parser("heatmap", help="PNGs of a trained model's predicted maps for one image")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by `run`")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--repr", help="the checkpoint's representation (checked against it when given)")
    parser.add_argument("--res", default="32,64,128,256",
                        help="continuous maps: queries on the long side, comma-separated (discrete: native)")
    parser.add_argument("--keypoint", type=int, default=0)
    parser.add_argument("--no-local-ensemble", action="store_true",
                        help="NerPE: decode from the single nearest cell, to show the discontinuities")
    parser.add_argument("--out", type=Path, default=Path("heatmaps"))


def _heatmap(args) -> None:
    from .render import render_checkpoint

    resolutions = [int(item) for item in args.res.split(",") if item.strip().isdigit()]
    if not resolutions or len(resolutions) != len(args.res.split(",")):
        raise HeatbenchError(f"--res {args.res!r}: expected comma-separated positive integers, e.g. 32,64,128")
    overrides = {"local_ensemble": False} if args.no_local_ensemble else {}
    for path in render_checkpoint(args.checkpoint, args.image, resolutions, args.out, args.keypoint, args.repr,
                                  **overrides):
        print(path)


def _add_data(commands) -> None:
    parser = commands.add_parser("data", help="what a run would load from a data set, and its split; a rendered "
                                              "set's samples as a PNG grid")
    parser.add_argument("path", help="'default', a DeepLabCut table or config.yaml, a COCO/MPII JSON, or "
                                     f"{SYNTHETIC_SYNTAX}")
    parser.add_argument("--image-root", help="image folder for the data")
    _add_split(parser)
    grid = parser.add_argument_group("rendered sets")
    grid.add_argument("--grid", type=Path, default=Path("synthetic.png"), help="the PNG to write (default "
                                                                                "synthetic.png)")
    grid.add_argument("--res", default="256x192", help="its input size, N or HxW (default 256x192)")
    grid.add_argument("--count", type=int, default=16, help="its samples, the training scenes' first (default 16)")


def _data(args) -> None:
    from .data import is_synthetic, load_dataset
    from .data.synthetic import parse_synthetic, write_grid
    from .splits import load_split, make_split

    if not is_synthetic(args.path):
        dataset = load_dataset(args.path, args.image_root)
        print("\n".join(dataset.summary()))
        print(make_split(dataset, _split_spec(args)).summary())  # last: a set that cannot be split shows the rest
    else:
        split = load_split(args.path, args.image_root, _split_spec(args))
        print("\n".join(split.train.summary()))  # the scenes' metadata; the split line gives both sides' sizes
        print(split.summary())
        sizes = parse_resolutions(args.res)
        if len(sizes) != 1:
            raise HeatbenchError(f"--res {args.res!r}: name one input size")
        if args.count < 1:
            raise HeatbenchError(f"--count {args.count}: must be >= 1")
        print(write_grid(parse_synthetic(args.path), args.grid, sizes[0], "train", args.count))


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="score a trained checkpoint on a data set, with run's columns")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by `run`")
    parser.add_argument("--data", required=True, help="a DeepLabCut table or config.yaml, a COCO/MPII JSON, "
                        "or a rendered set synthetic[:...] (scored on its test scenes)")
    parser.add_argument("--image-root", help="image folder for --data")
    parser.add_argument("--no-flip-test", action="store_true", help="evaluate without the flip test")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, help="directory to write (default results/<checkpoint>_on_<data>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _evaluate(args) -> None:
    from .evaluate import evaluate

    evaluate(args.checkpoint, args.data, args.image_root, flip_test=not args.no_flip_test, out=args.out,
             device=args.device, progress=not args.quiet)


def _add_profile(commands) -> None:
    parser = commands.add_parser("profile", help="the cost table: parameters, GFLOPs, latency, throughput, memory")
    parser.add_argument("--repr", default="all", help="'all' or comma-separated names")
    parser.add_argument("--res", default="64,128,256x192", help="input sizes (default 64,128,256x192)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", default="1,32", help="inference batch sizes, comma-separated (default 1,32)")
    parser.add_argument("--backbone", type=int, choices=(18, 50), default=18, help="ResNet depth (default 18)")
    parser.add_argument("--out", type=Path, default=Path("results/profile"))


def _profile(args) -> None:
    from .profile import profile_rows, write_profile_table
    from .train import resolve_device

    names = _names(args.repr)
    items = args.batch.split(",")
    if not all(item.strip().isdigit() for item in items):
        raise HeatbenchError(f"--batch {args.batch!r}: expected comma-separated positive integers, e.g. 1,32")
    device = resolve_device(args.device)
    rows = profile_rows(names, parse_resolutions(args.res), device, [int(item) for item in items],
                        backbone_depth=args.backbone)
    print(write_profile_table(rows, args.out, device))


def _names(text: str) -> list[str]:
    """'all' or comma-separated names -> registered names; an unknown one is an error listing the known."""
    names = registry.available() if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise HeatbenchError("--repr: name at least one representation")
    for name in names:
        registry.get(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heatbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    commands.add_parser("list", help="registered representations and where each came from")
    _add_floor(commands)
    _add_merge(commands)
    _add_report(commands)
    _add_heatmap(commands)
    _add_profile(commands)
    _add_evaluate(commands)
    _add_data(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # pandas imports it (PyTables needs it); it logs its threads
    allocator.configure()  # this process is heatbench's own; importing heatbench configures nothing
    handlers = {"run": _run, "list": _list, "floor": _floor, "merge": _merge, "report": _report, "heatmap": _heatmap,
                "profile": _profile, "evaluate": _evaluate, "data": _data}
    try:
        handlers[args.command](args)
    except (HeatbenchError, registry.UnknownRepresentationError, ConfigError) as error:
        print(f"heatbench {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
