"""`minivlm-hf push DIR REPO_ID`: publish a checkpoint folder on the Hub (HF_ENDPOINT for another endpoint)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import add_hub_upload_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a checkpoint folder to the Hub",
        description=(
            "Check a checkpoint folder (safetensors weights that match config.json, a namespaced repo id) and upload "
            "it in one commit: weights, configs with the complete auto_map, processor / tokenizer, the model code "
            "(trust_remote_code), metrics and a generated model card. The folder is never modified. The endpoint is "
            "HF_ENDPOINT (default https://huggingface.co) or --endpoint; the token is --token, HF_TOKEN or the "
            "stored login. Prints a JSON summary with the commit sha."
        ),
    )
    parser.add_argument("folder", type=Path, help="checkpoint folder (save_pretrained / minivlm-hf init output)")
    parser.add_argument("repo_id", help="namespace/name")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if needed)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    add_hub_upload_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub.push import push_checkpoint

    result = push_checkpoint(
        args.folder,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        token=args.token,
        endpoint=args.endpoint,
    )
    where = result.pr_url or result.commit_url
    if result.changed:
        print(f"pushed {len(result.files)} files to {result.repo_id}@{result.revision}: {where}", file=sys.stderr)
    else:
        note = " (no pull request opened)" if args.create_pr else ""
        print(f"{result.repo_id}@{result.revision} already holds these files: nothing to commit{note}", file=sys.stderr)
    print(json.dumps(result.summary(), indent=2))
    return 0
