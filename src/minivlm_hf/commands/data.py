"""``minivlm-hf data``: build the synthetic datasets and save them, or publish a saved one on the Hub.

    minivlm-hf data scenes --out DIR [--num-train N] [--num-validation N] [--num-test N] [--seed S]
    minivlm-hf data nlvr   --out DIR [--num-train N] [--num-validation N] [--num-test N] [--seed S]
    minivlm-hf data scenes --format parquet|webdataset --shards N --output-dir DIR ...
    minivlm-hf data push DIR REPO_ID
    minivlm-hf data features --detector TEE_DIR --scenes PARQUET_DIR --out DIR     (also under torchrun)

``--format arrow`` (default) loads back with ``datasets.load_from_disk(DIR)``; ``--format parquet`` writes N parquet
shards per split in the Hub's layout with a dataset card, which ``datasets.load_dataset(DIR, streaming=True)`` reads
(and ``data push`` publishes as a dataset repo); ``--format webdataset`` writes N tar shards per split (a PNG and a
JSON file per row) that ``datasets``' webdataset builder reads, and ``stream_dataset`` streams as the same rows.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from ._common import add_hub_upload_arguments, non_negative_int, positive_int, unit_interval


def _add_common(parser: argparse.ArgumentParser, defaults: tuple[int, int, int], unit: str) -> None:
    parser.add_argument("--out", "--output-dir", dest="out", required=True, type=Path,
                        help="folder to save the DatasetDict into")
    parser.add_argument("--format", choices=("arrow", "parquet", "webdataset"), default="arrow",
                        help="arrow: save_to_disk (default); parquet: sharded parquet files + dataset card (Hub "
                             "layout); webdataset: sharded tar files (PNG + JSON per row) + dataset card")
    parser.add_argument("--shards", type=positive_int, default=1,
                        help="files per split with --format parquet / webdataset (default 1; at least the number of "
                             "ranks that will stream it)")
    parser.add_argument("--num-train", type=positive_int, default=defaults[0], help=f"{unit} in train (default {defaults[0]})")
    parser.add_argument(
        "--num-validation", type=non_negative_int, default=defaults[1], help=f"{unit} in validation (default {defaults[1]})"
    )
    parser.add_argument("--num-test", type=non_negative_int, default=defaults[2], help=f"{unit} in test (default {defaults[2]})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="generation seed (default 0)")
    parser.add_argument("--min-size", type=positive_int, default=160, help="smallest image side in pixels (default 160)")
    parser.add_argument("--max-size", type=positive_int, default=320, help="largest image side in pixels (default 320)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (shown only on a terminal anyway)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="build the synthetic datasets", description="Build the synthetic datasets (saved with save_to_disk)."
    )
    sub = parser.add_subparsers(dest="data_command", metavar="DATASET")
    sub.required = True
    scenes = sub.add_parser(
        "scenes",
        help="scenes with boxes, captions and VQA questions",
        description="Synthetic scenes: detection boxes, 5 captions and 4-6 VQA questions per image.",
    )
    _add_common(scenes, (2000, 200, 200), "images")
    scenes.set_defaults(func=_run_scenes)
    nlvr = sub.add_parser(
        "nlvr",
        help="NLVR2-style image pairs with true/false statements",
        description="Pairs of synthetic scenes, each with 2 statements (one true, one false).",
    )
    _add_common(nlvr, (1000, 100, 100), "image pairs")
    nlvr.set_defaults(func=_run_nlvr)
    push = sub.add_parser(
        "push",
        help="publish a parquet dataset folder on the Hub",
        description=(
            "Upload a folder written by `minivlm-hf data ... --format parquet` (parquet shards + README.md dataset "
            "card) to a dataset repo in one commit (created if needed). The endpoint is HF_ENDPOINT (default "
            "https://huggingface.co) or --endpoint; the token is --token, HF_TOKEN or the stored login."
        ),
    )
    push.add_argument("folder", type=Path, help="folder written with --format parquet")
    push.add_argument("repo_id", help="namespace/name of the dataset repo")
    push.add_argument("--revision", default=None, help="branch to commit to (default main)")
    add_hub_upload_arguments(push)
    push.set_defaults(func=_run_push)
    features = sub.add_parser(
        "features",
        help="extract region features of a streamable dataset into parquet shards (data parallel under torchrun)",
        description=(
            "Run a trained TEE over every image of a scenes / NLVR dataset (a folder written with --format parquet "
            "or webdataset, or a Hub dataset repo) and write the rows with their region features as parquet shards "
            "(data/<split>/features-r<rank>-<shard>.parquet, one per scene shard) with a dataset card. Under "
            "`torchrun --nproc_per_node N` or `accelerate launch` each rank extracts its own scene shards (the "
            "shard count must be a multiple of N) into the same --out folder. The fusion stages train on the "
            "result with the recipe key data.stream."
        ),
    )
    features.add_argument("--detector", type=Path, required=True, help="folder of a trained detector (train detector)")
    features.add_argument("--scenes", required=True,
                          help="parquet / webdataset folder (data scenes|nlvr --format ...) or Hub dataset repo id")
    features.add_argument("--out", "--output-dir", dest="out", required=True, type=Path, help="feature folder to write")
    features.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                          help="extract this split (repeatable; default every split with rows)")
    features.add_argument("--batch-size", type=positive_int, default=16, help="images per TEE call (default 16)")
    features.add_argument("--tag-threshold", type=unit_interval, default=0.3,
                          help="a region becomes a tag at this score (default 0.3, the recipes' data.tag_threshold)")
    features.add_argument("--tag-attributes", action="store_true", help="'attribute ... class' tags per region")
    features.add_argument("--tag-attribute-threshold", type=unit_interval, default=0.5,
                          help="attribute probability to name it with --tag-attributes (default 0.5)")
    features.add_argument("--tag-order", choices=("score", "area"), default="score",
                          help="tag phrases most confident first (default) or largest box first")
    features.add_argument("--revision", default=None, help="revision of a Hub dataset repo")
    features.add_argument("--overwrite", action="store_true", help="replace a feature folder written by this command")
    features.add_argument("--quiet", action="store_true", help="no progress bar (shown only on a terminal anyway)")
    features.set_defaults(func=_run_features)


# Written into every folder this command saves: --overwrite replaces only a folder that holds it.
MANIFEST = "minivlm_dataset.json"


def _prepare_out(args) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise ValueError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
        if not (out / MANIFEST).is_file():
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
            raise ValueError(
                f"refusing to overwrite {out}: it is not a dataset saved by `minivlm-hf data` (no {MANIFEST}); it "
                f"holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
            )


def _save(dataset, args) -> None:
    """Save into a staging folder next to --out, then swap it in: an interruption leaves the old dataset or the
    new one, whole."""
    import json

    from minivlm_hf.data.cache import save_quietly
    from minivlm_hf.io.atomic import atomic_directory

    settings = {k: v for k, v in vars(args).items() if k.startswith(("num_", "seed", "min_", "max_", "format"))}
    if args.format != "arrow":
        settings["shards"] = args.shards
    with atomic_directory(args.out) as staging:
        if args.format != "arrow":
            _write_parquet(dataset, staging, args)
        else:
            save_quietly(dataset, staging)
        (staging / MANIFEST).write_text(json.dumps({"dataset": args.data_command, **settings}, indent=1) + "\n")


# pretty name, description, Hub task categories of the dataset card
_CARD_TEXT = {
    "scenes": ("MiniVLM synthetic scenes", "Synthetic scenes with exact ground truth (generated by `minivlm-hf data "
               "scenes`): detection boxes with object classes and colour / size attributes, 5 captions and 4-6 VQA "
               "questions (10 answers each) per image.",
               ("object-detection", "image-to-text", "visual-question-answering")),
    "nlvr": ("MiniVLM synthetic NLVR pairs", "NLVR2-style pairs of synthetic scenes (generated by `minivlm-hf data "
             "nlvr`), each with true / false statements.", ("image-text-to-text",)),
}


def _write_parquet(dataset, folder: Path, args) -> None:
    import datasets

    from minivlm_hf.data.parquet import with_object_class_names, write_parquet_shards
    from minivlm_hf.data.vocab import OBJECT_ID2LABEL
    from minivlm_hf.data.webdataset import write_webdataset_shards

    names = [OBJECT_ID2LABEL[i] for i in range(len(OBJECT_ID2LABEL))]
    dataset = datasets.DatasetDict({k: with_object_class_names(v, names) for k, v in dataset.items()})
    pretty_name, description, tasks = _CARD_TEXT[args.data_command]
    write = write_parquet_shards if args.format == "parquet" else write_webdataset_shards
    write(dataset, folder, args.shards, pretty_name=pretty_name, description=description, task_categories=tasks)


def _check_shards(args, counts: dict[str, int]) -> None:
    if args.format == "arrow":
        return
    small = {name: n for name, n in counts.items() if 0 < n < args.shards}
    if small:
        raise ValueError(f"--shards {args.shards} is more than the rows of {', '.join(f'{k} ({v})' for k, v in small.items())}")


def _run_scenes(args) -> int:
    from minivlm_hf.data import load_scenes

    _prepare_out(args)
    _check_shards(args, {"train": args.num_train, "validation": args.num_validation, "test": args.num_test})
    start = time.perf_counter()
    dataset = load_scenes(
        num_train=args.num_train, num_validation=args.num_validation, num_test=args.num_test, seed=args.seed,
        min_size=args.min_size, max_size=args.max_size, use_cache=False, progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    _save(dataset, args)
    total = sum(split.num_rows for split in dataset.values())
    print(f"saved synthetic scenes to {args.out} ({total} images in {elapsed:.1f}s, {total / max(elapsed, 1e-9):.0f} images/s)")
    for name, split in dataset.items():
        meta = split.select_columns(["objects", "questions", "question_types"])
        objects = sum(len(o["category_id"]) for o in meta["objects"])
        questions = Counter(t for types in meta["question_types"] for t in types)
        print(
            f"  {name}: {split.num_rows} images, {objects} objects, {5 * split.num_rows} captions, "
            f"{sum(questions.values())} questions ({', '.join(f'{k} {v}' for k, v in sorted(questions.items()))})"
        )
    return 0


def _run_nlvr(args) -> int:
    from minivlm_hf.data import load_nlvr

    _prepare_out(args)
    start = time.perf_counter()
    dataset = load_nlvr(
        num_train=args.num_train, num_validation=args.num_validation, num_test=args.num_test, seed=args.seed,
        min_size=args.min_size, max_size=args.max_size, use_cache=False, progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    _save(dataset, args)
    print(f"saved NLVR pairs to {args.out} (built in {elapsed:.1f}s)")
    for name, split in dataset.items():
        labels = Counter(split["label"])
        print(f"  {name}: {split.num_rows} statements, {labels.get(1, 0)} true / {labels.get(0, 0)} false")
    return 0


def _run_push(args) -> int:
    from minivlm_hf.data.parquet import push_dataset_folder

    url = push_dataset_folder(
        args.folder, args.repo_id, revision=args.revision, private=args.private,
        commit_message=args.commit_message, token=args.token, endpoint=args.endpoint,
    )
    print(f"pushed {args.folder} to dataset repo {args.repo_id}: {url}")
    return 0


def _run_features(args) -> int:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()  # the torchrun / accelerate launch process group (gloo on CPU, NCCL on GPUs)
        device, rank = state.device, state.process_index
    else:
        import torch

        device, rank = torch.device("cuda" if torch.cuda.is_available() else "cpu"), 0
    if not (args.detector / "config.json").is_file():
        raise ValueError(f"--detector {args.detector} is not a trained detector folder (no config.json)")
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    import minivlm_hf  # noqa: F401 - registers the TEE with the Auto classes
    from minivlm_hf.training.feature_shards import extract_feature_shards

    detector = AutoModelForObjectDetection.from_pretrained(str(args.detector)).to(device)
    image_processor = AutoImageProcessor.from_pretrained(str(args.detector))
    start = time.perf_counter()
    counts = extract_feature_shards(
        detector, image_processor, args.scenes, args.out, splits=args.splits, batch_size=args.batch_size,
        tag_threshold=args.tag_threshold, tag_attributes=args.tag_attributes,
        attribute_threshold=args.tag_attribute_threshold, tag_order=args.tag_order, overwrite=args.overwrite,
        revision=args.revision, progress=not args.quiet, detector_name=str(args.detector),
    )
    if rank == 0:
        total = sum(counts.values())
        print(f"saved region features of {total} rows to {args.out} in {time.perf_counter() - start:.1f}s "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0
