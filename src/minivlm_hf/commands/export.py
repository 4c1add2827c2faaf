"""``minivlm-hf export onnx --model DIR --output OUT_DIR [--opset N]``: ONNX graphs of the TEE, of the fusion
encoder + VQA head and of the captioning decoder, verified against PyTorch with ONNX Runtime (see
``minivlm_hf.export.onnx`` for what is in the graphs and what stays in Python)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import positive_float, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export models (ONNX)", description=__doc__)
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    onnx = formats.add_parser(
        "onnx", help="TEE + fusion/VQA + captioning graphs for ONNX Runtime",
        description="Export a saved TEE detector or MiniVLM model to ONNX. A detector (or any fusion model with a "
        "vision_config) gives tee_dense.onnx + tee_box_head.onnx; a VQA model also gives fusion_vqa.onnx; a "
        "captioning model gives decoder_model.onnx + decoder_with_past_model.onnx (dynamo exporter, opset >= 18) "
        "with config.json, generation_config.json and its processor files (minivlm_hf.export.OnnxCaptioner runs "
        "them). Writes "
        "onnx_manifest.json (inputs, opset, what stays in Python, verification). Opsets 14-20 (default 17).",
    )
    onnx.add_argument("--model", required=True, help="saved model folder (detector or MiniVLM model)")
    onnx.add_argument("--output", type=Path, required=True, help="output folder")
    onnx.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (14-20, default 17)")
    onnx.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    onnx.add_argument("--atol", type=positive_float, default=1e-4, help="verification tolerance (default 1e-4)")
    onnx.add_argument("--trust-remote-code", action="store_true", help="load the model code shipped with the model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.onnx import SUPPORTED_OPSETS, check_export_output, export_onnx, load_for_export
    from ..export.onnx_captioning import is_captioner, load_processor

    if args.opset not in SUPPORTED_OPSETS:
        raise ValueError(f"--opset {args.opset} is not supported; choose {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]}")
    check_export_output(args.output)  # before the model is loaded
    model = load_for_export(args.model, trust_remote_code=args.trust_remote_code)
    processor = None
    if is_captioner(model):  # the export folder is a captioner's: the processor / tokenizer files go with it
        processor = load_processor(args.model, trust_remote_code=args.trust_remote_code)
    result = export_onnx(model, args.output, opset=args.opset, verify=not args.no_verify, atol=args.atol,
                         processor=processor)
    worst = max((d["max_abs"] for d in result.verification.values()), default=None)
    print(json.dumps({
        "output": str(args.output), "opset": args.opset, "files": result.files,
        "verified": not args.no_verify, "passed": result.passed, "max_abs_diff": worst,
        "seconds": round(result.seconds, 1),
    }, indent=2))
    if not args.no_verify and not result.passed:
        print("minivlm-hf export: ONNX Runtime outputs differ from PyTorch beyond --atol (see onnx_manifest.json)")
        return 1
    return 0
