"""``fan-edge eval``: landmark accuracy of a model or an exported artifact (:func:`fan_edge.evaluation.evaluate`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..limits import MAX_BATCH_SIZE, MAX_THREADS, batch_arg, threads_arg
from .common import model_arg, stderr


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, training_folders

    # Progress on stderr while the faces run (tqdm: off when stderr is not a terminal or FAN_EDGE_NO_PROGRESS=1).
    result = evaluate(args.model, args.data, batch_size=args.batch_size, backend=args.backend, device=args.device,
                      threads=args.threads, trust=args.trust, progress=True, log=stderr)
    runs_on = {"backend": result.backend, "device": result.device}
    figures = result.scores.as_percent()
    folders = {name: scores.as_percent() for name, scores in result.by_folder().items()}
    flagged = training_folders(result.folders, args.data)
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), **runs_on, **figures, "folders": folders,
                          "training_folders": flagged}, indent=2))
        return 0
    where = f"; {result.backend} on {result.device}" if result.backend != "pytorch" else ""
    print(f"{args.model} on {args.data}: {figures['faces']} faces (boxes from ground-truth landmarks){where}")
    print(f"NME inter-ocular {figures['nme_io']:.2f} %   NME box {figures['nme_box']:.2f} %   AUC@7 {figures['auc7']:.1f} %   FR@7 {figures['fr7']:.2f} %")
    if list(folders) == ["."]:
        return 0  # the folder itself, no subfolders: the line above says it all
    width = max(len(name) for name in folders)
    for name, f in folders.items():
        note = "   (named like training data)" if name in flagged else ""
        print(f"  {name.ljust(width)}  {f['faces']:>6} faces   NME io {f['nme_io']:.2f} %{note}")
    return 0


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="landmark accuracy on a folder of images with .pts (a model or an exported artifact)")
    model_arg(p, artifacts=True)
    p.add_argument("--data", required=True, help="folder of images with .pts annotations, searched recursively "
                   "(the faces scored in each subfolder are listed)")
    p.add_argument("--batch-size", type=batch_arg, default=16, help=f"faces per forward pass (1..{MAX_BATCH_SIZE}; default 16)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "litert"),
                   help="for an exported artifact (.onnx, .xml, .tflite), scored through the runtime with its sidecar contract")
    p.add_argument("--device", default="auto", help="for an exported artifact: auto, cpu, gpu, npu, or a backend's own")
    p.add_argument("--threads", type=threads_arg, help=f"for an exported artifact: intra-op threads (1..{MAX_THREADS})")
    p.set_defaults(handler=cmd_eval)
