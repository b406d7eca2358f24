"""Command-line entry points: ``fan-edge`` (info, models, eval) and the per-task commands.

Errors a user can cause are ``FanEdgeError``s and print as one line with a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .errors import FanEdgeError
from .extras import missing_extra
from .limits import (
    MAX_BATCH_SIZE, MAX_INPUT_SIZE, MAX_THREADS, MAX_WORKERS, batch_arg, input_size_arg, loader_workers_arg, threads_arg,
    workers_arg,
)


def _model_arg(parser: argparse.ArgumentParser, positional: bool = True, artifacts: bool = False) -> None:
    help_text = "registry name (see `fan-edge models`) or checkpoint path (.safetensors, .pth.tar, TorchScript .zip)"
    if artifacts:
        help_text = help_text.replace(" or checkpoint", ", checkpoint") + ", or exported artifact (.onnx, .xml, .tflite)"
    if positional:
        parser.add_argument("model", nargs="?", default="default", help=help_text)
    else:
        parser.add_argument("--model", default="default", help=help_text)
    parser.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")


def model_summary(name: str, trust: bool = False) -> dict[str, Any]:
    """Variant, architecture, parameters and MACs.

    A registry name is answered from its model card and config alone (counts in closed form,
    :func:`fan_edge.models.complexity.entry_complexity`): no torch, no forward pass. A checkpoint is read and built.
    """
    from .models.complexity import config_macs, entry_complexity
    from .models.factory import is_checkpoint_path
    from .models.registry import get_entry

    if is_checkpoint_path(name):
        from .models import count_parameters, create_model

        model = create_model(name, trust=trust)
        cfg, trained = model.config, True
        parameters, macs = count_parameters(model), config_macs(cfg, exit_stack=model.exit_stack)
    else:
        entry = get_entry(name)
        cfg, trained = entry.config, entry.trained
        parameters, macs = entry_complexity(entry)
    return {
        "model": name,
        "stacks": cfg.stacks,
        "width": cfg.width,
        "input_size": cfg.input_size,
        "heatmap_size": cfg.heatmap_size,
        "num_landmarks": cfg.num_landmarks,
        "parameters": parameters,
        "macs": macs,
        "trained": trained,
        "crop": cfg.crop.to_dict(),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    info = model_summary(args.model, args.trust)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model        {info['model']}{'' if info['trained'] else '  (untrained)'}")
    print(f"stacks       {info['stacks']}")
    print(f"width        {info['width']}")
    print(f"input        {info['input_size']}x{info['input_size']} RGB [0,1], heatmaps {info['heatmap_size']}x{info['heatmap_size']}")
    print(f"parameters   {info['parameters']:,}")
    print(f"MACs         {info['macs'] / 1e9:.3f} G")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .bench.zoo import format_table, zoo_rows

    rows = zoo_rows()
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        print(format_table(rows, markdown=args.markdown))
    return 0


def _artifact_suffixes() -> list[str]:
    from .runtime.backends import BACKENDS

    return sorted({s for entry in BACKENDS.values() for s in entry.suffixes})


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.evaluate import evaluate_model, evaluate_session, training_folders
    from .errors import ConfigError

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    # Progress on stderr while the faces run (tqdm: off when stderr is not a terminal or FAN_EDGE_NO_PROGRESS=1).
    if Path(args.model).suffix.lower() in _artifact_suffixes():
        from .runtime.session import LandmarkSession

        with LandmarkSession(args.model, backend=args.backend, device=args.device, threads=args.threads) as session:
            result = evaluate_session(session, args.data, batch_size=args.batch_size, progress=True, log=log)
            runs_on = {"backend": session.backend.name, "device": session.device}
    else:
        if args.backend != "auto" or args.device != "auto" or args.threads is not None:
            raise ConfigError(f"--backend, --device and --threads are for exported artifacts ({', '.join(_artifact_suffixes())}); "
                              f"{args.model} runs in PyTorch on the CPU")
        from .models import create_model

        model = create_model(args.model, trust=args.trust)
        result = evaluate_model(model, args.data, batch_size=args.batch_size, progress=True, log=log)
        runs_on = {"backend": "pytorch", "device": "cpu"}
    figures = result.scores.as_percent()
    folders = {name: scores.as_percent() for name, scores in result.by_folder().items()}
    flagged = training_folders(result.folders, args.data)
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), **runs_on, **figures, "folders": folders,
                          "training_folders": flagged}, indent=2))
        return 0
    where = f"; {runs_on['backend']} on {runs_on['device']}" if runs_on["backend"] != "pytorch" else ""
    print(f"{args.model} on {args.data}: {figures['faces']} faces (boxes from ground-truth landmarks){where}")
    print(f"NME inter-ocular {figures['nme_io']:.2f} %   NME box {figures['nme_box']:.2f} %   AUC@7 {figures['auc7']:.1f} %   FR@7 {figures['fr7']:.2f} %")
    if list(folders) == ["."]:
        return 0  # the folder itself, no subfolders: the line above says it all
    width = max(len(name) for name in folders)
    for name, f in folders.items():
        note = "   (named like training data)" if name in flagged else ""
        print(f"  {name.ljust(width)}  {f['faces']:>6} faces   NME io {f['nme_io']:.2f} %{note}")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .bench.zoo import bundle

    path = bundle(args.checkpoint, args.name, args.data, default=args.default, description=args.description, notes=args.notes,
                  recipe=args.recipe)
    card = json.loads(path.with_suffix(".json").read_text())
    print(f"bundled {args.name} -> {path}")
    print(json.dumps(card["figures"], indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import check_image_output, draw_faces, parse_boxes, predict_photo, write_image

    if args.out:
        check_image_output(args.out)  # before the photo is decoded and the model run
    boxes = parse_boxes(args.boxes) if args.boxes is not None else None
    result, image = predict_photo(
        args.image, args.model, boxes, backend=args.backend, device=args.device, threads=args.threads,
        refine_passes=args.refine_passes, scan_size=args.scan_size, trust=args.trust,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    if args.out:
        write_image(args.out, draw_faces(image, result.faces))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    faces = result.faces
    found = "detected" if result.detected else "given"
    print(f"{args.image}: {len(faces.boxes)} face(s) {found}; {result.artifact.name} on {result.backend} ({result.device})")
    for i, box in enumerate(faces.boxes):
        print(f"face {i}: box {', '.join(f'{v:.1f}' for v in box)}  mean point score {float(faces.scores[i].mean()):.3f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .export.portability import check_artifact

    failed = 0
    for path in args.artifact:
        problems = check_artifact(path)
        failed += bool(problems)
        print(f"{path}: " + ("ok (no int8 16-bit overflow without VNNI, static batch as declared)" if not problems
                             else f"{len(problems)} problems"))
        for line in problems[: None if args.all else 10]:
            print(f"  {line}")
        if len(problems) > 10 and not args.all:
            print(f"  ... {len(problems) - 10} more (--all)")
    return 1 if failed else 0


def _cmd_label(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .atomic import check_writable
    from .label import LabelSpec, Thresholds, label_folder

    def limit(value: float) -> float | None:
        return None if value < 0 else value

    check_writable(args.out, "--out", kind="folder")  # before the teachers load
    spec = LabelSpec(
        source=Path(args.dir), out=Path(args.out), teachers=tuple(args.teacher),
        boxes=Path(args.boxes) if args.boxes else None, all_faces=args.all_faces, copy=args.copy,
        max_images=args.max_images, consensus=args.consensus, flip=not args.no_flip, scan_size=args.scan_size,
        device=args.device, workers=args.workers, threads=args.threads, skip_unreadable=args.skip_unreadable, trust=args.trust,
        thresholds=Thresholds(limit(args.max_disagreement), limit(args.max_flip), args.min_detector_score),
    )
    summary = label_folder(spec, progress=not args.json and not args.no_progress)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


def _cmd_soak(args: argparse.Namespace) -> int:
    from .runtime.soak import run_from_args

    return run_from_args(args)


def _one_line(exc: BaseException) -> str:
    """The error as one line, whatever carried it: a DataLoader worker re-raises it with the worker's whole
    traceback in the message, of which the last line is the original error."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "Original Traceback" in text:
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return lines[-1].removeprefix(prefix)
    return " ".join(lines)


def _one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """argparse's own errors (an option missing, malformed or not among its choices) in one line too.

    argparse prints the whole usage before its error line; the usage stays one ``--help`` away.
    """

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_line_usage_errors(sub)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    _one_line_usage_errors(parser)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except FanEdgeError as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        # The bounds of fan_edge.limits keep every single size sane; a combination of them (a big batch of big
        # inputs on a small machine) can still run out of memory, and that is one line too, not a traceback.
        if args.debug or not _out_of_memory(exc):
            raise
        print(f"{parser.prog}: error: out of memory ({_one_line(exc)[:160]}); try a smaller batch, input size or model",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        # A toolkit command in a runtime-only install (numpy, Pillow and one backend): name the extra, not a traceback.
        message = missing_extra(exc)
        if args.debug or message is None:
            raise
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: Python's MemoryError, or torch's CPU and CUDA allocators' errors."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fan-edge", description="FAN face alignment from training to the edge.")
    parser.add_argument("--version", action="version", version=f"fan-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("info", help="variant, stacks, width, input size, parameters and MACs of a model")
    _model_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("models", help="the registry and each model card's figures (Table 5, measured)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="as a markdown table (docs/zoo.md is this output)")
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser("eval", help="landmark accuracy on a folder of images with .pts (a model or an exported artifact)")
    _model_arg(p, artifacts=True)
    p.add_argument("--data", required=True, help="folder of images with .pts annotations, searched recursively "
                   "(the faces scored in each subfolder are listed)")
    p.add_argument("--batch-size", type=batch_arg, default=16, help=f"faces per forward pass (1..{MAX_BATCH_SIZE}; default 16)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "litert"),
                   help="for an exported artifact (.onnx, .xml, .tflite), scored through the runtime with its sidecar contract")
    p.add_argument("--device", default="auto", help="for an exported artifact: auto, cpu, gpu, npu, or a backend's own")
    p.add_argument("--threads", type=threads_arg, help=f"for an exported artifact: intra-op threads (1..{MAX_THREADS})")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("bundle", help="add a trained checkpoint to the packaged zoo with freshly measured figures")
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True, help="zoo name, e.g. fan2-w64-i128-300w")
    p.add_argument("--data", required=True, help="folder the card's figures are measured on (never trained on)")
    p.add_argument("--default", action="store_true", help="make it the bundled default model")
    p.add_argument("--description", default="")
    p.add_argument("--notes", default="", help="anything the recipe alone does not say (e.g. a schedule changed mid-run)")
    p.add_argument("--recipe", default="", help="the command(s) that reproduce it from scratch, when the checkpoint's own "
                   "recipe is one stage of several (default: the training card's recipe)")
    p.set_defaults(handler=_cmd_bundle)

    p = sub.add_parser("predict", help="68 landmarks of every face in a photo (faces detected unless --boxes), drawn with --out")
    p.add_argument("image", help="a photo (.jpg, .png, ...; 8- or 16-bit, grey, RGB or RGBA)")
    p.add_argument("--model", default="default", help="exported artifact (.onnx, .xml, .tflite), or a registry name or checkpoint "
                   "(exported once to the cache, ~/.cache/fan-edge; default: the bundled default)")
    p.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")
    p.add_argument("--boxes", metavar="BOXES", help="face boxes 'x1,y1,x2,y2;x1,y1,x2,y2' in pixels, or a JSON file of them "
                   "(default: detect faces with dlib's HOG detector)")
    p.add_argument("--out", metavar="PNG", help="write the photo with boxes and landmarks drawn")
    p.add_argument("--json", action="store_true", help="print boxes, points and scores as JSON")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino", "litert"))
    p.add_argument("--device", default="auto", help="auto, cpu, gpu, npu, or a backend's own (cuda, tensorrt, qnn, coreml, gpu.1...)")
    p.add_argument("--threads", type=threads_arg, help=f"intra-op threads of the backend (1..{MAX_THREADS}; default: its own)")
    p.add_argument("--refine-passes", type=int, metavar="N",
                   help="re-box each face from its landmarks and predict again N times (default 1 for detected faces, 0 for --boxes)")
    p.add_argument("--scan-size", type=int, metavar="PX",
                   help="long side the photo is resized to for detection (default 720; raise it for small faces in big photos)")
    p.set_defaults(handler=_cmd_predict)

    from .label.job import MAX_DEFAULT_WORKERS
    from .label.quality import Thresholds
    from .runtime.detect import SCAN_SIZE

    limits = Thresholds()
    p = sub.add_parser("label", help="annotate unlabeled face photos with teachers (FAN models, dlib): 300-W .pts training "
                       "data in --out, a quality record per face in OUT/labels.jsonl (resumable; docs/label.md)")
    p.add_argument("dir", help="folder of photos (searched recursively)")
    p.add_argument("--teacher", action="append", required=True, metavar="T",
                   help="a FAN checkpoint or trained zoo name (default, fan2-w64-i256-300w, an official 2DFAN-4 .pth.tar), "
                   "or dlib (its 68-point shape predictor; pip install 'fan-edge[label]'); repeat for a consensus")
    p.add_argument("--out", required=True, help="output folder: images (hard links) with .pts, labels.jsonl, label.json")
    p.add_argument("--boxes", metavar="JSON", help="face boxes {\"image path relative to DIR\": [[x1, y1, x2, y2], ...]} "
                   "instead of the detector (only the images it names are labelled)")
    p.add_argument("--all-faces", action="store_true", help="label every face of an image (NAME_1.jpg/.pts, NAME_2... as "
                   "300-W names them), not just the best-scoring one")
    p.add_argument("--copy", action="store_true", help="copy the images into --out instead of hard-linking them")
    p.add_argument("--max-images", type=int, metavar="N", help="label only the first N images (sorted); rerun with a larger "
                   "N to go on")
    p.add_argument("--max-disagreement", type=float, default=limits.max_disagreement, metavar="PCT",
                   help=f"drop a face whose teachers' mean NME io against their consensus is above PCT %% (default "
                   f"{limits.max_disagreement}; negative: no limit)")
    p.add_argument("--max-flip", type=float, default=limits.max_flip, metavar="PCT",
                   help=f"drop a face whose labels on the photo and on its mirror image differ by more than PCT %% NME io "
                   f"(default {limits.max_flip}; negative: no limit)")
    p.add_argument("--min-detector-score", type=float, metavar="S", help="drop a face whose dlib HOG detector score is "
                   "below S (default: keep every face the detector reports; it reports scores from 0)")
    p.add_argument("--consensus", choices=("mean", "median"), default="mean", help="per-point rule over the teachers (default "
                   "mean: better than the median on AFW, where teachers of one family agree with each other)")
    p.add_argument("--no-flip", action="store_true", help="skip the mirrored pass (faster; no flip check)")
    p.add_argument("--scan-size", type=int, default=SCAN_SIZE, metavar="PX", help=f"long side photos are resized to for "
                   f"detection (default {SCAN_SIZE})")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda for the FAN teachers")
    p.add_argument("--workers", type=workers_arg, metavar="N",
                   help=f"processes labelling images (1..{MAX_WORKERS}), one torch thread each (default: one "
                   f"per core, at most {MAX_DEFAULT_WORKERS}; 1: in this process)")
    p.add_argument("--threads", type=threads_arg, metavar="N",
                   help=f"torch threads per process (1..{MAX_THREADS}; default: the cores shared out)")
    p.add_argument("--skip-unreadable", action="store_true", help="record unreadable images and go on (default: stop "
                   "with an error naming the file)")
    p.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_label)

    from .runtime.soak import add_arguments as soak_arguments

    p = sub.add_parser("check", help="checks of an artifact that hold on every CPU: ONNX int8 sums that can saturate "
                       "16 bits on x86 without VNNI, a static batch in every activation (exit 1 on a problem)")
    p.add_argument("artifact", nargs="+", help=".onnx or .tflite")
    p.add_argument("--all", action="store_true", help="list every problem, not the first ten")
    p.set_defaults(handler=_cmd_check)

    p = sub.add_parser("soak", help="an artifact under many threads: every result against a sequential run, errors, memory "
                       "growth after warm-up (torch-free; python -m fan_edge.runtime.soak)")
    soak_arguments(p)
    p.set_defaults(handler=_cmd_soak)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser(), argv)


# TrainSpec fields whose flags are bounded at parse time (fan_edge.limits): a typo such as --batch-size 1600000 or
# --input-size 65536 is a one-line usage error, not a traceback after allocating tens of gigabytes.
_SPEC_TYPES: dict[str, Callable[[str], int]] = {
    "batch_size": batch_arg, "input_size": input_size_arg, "workers": loader_workers_arg,
}


def _spec_arguments(parser: argparse.ArgumentParser, distill: bool) -> None:
    """One flag per TrainSpec field, so the CLI and the model cards' recipes cannot drift apart."""
    import dataclasses

    from .train.spec import TrainSpec

    defaults = TrainSpec()
    for f in dataclasses.fields(TrainSpec):
        if f.name == "teacher" and not distill:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name)
        if f.name == "data":
            parser.add_argument(flag, action="append", required=True, metavar="DIR",
                                help="folder of images (with .pts, or without for distillation); repeatable")
            continue
        if f.name == "data_weights":
            parser.add_argument("--data-weight", dest="data_weights", action="append", type=float, default=[], metavar="W",
                                help="per --data folder, in order: how many times each of its faces is drawn per epoch "
                                     "(default 1 each; 0.5 draws a seeded half)")
            continue
        if f.name == "teacher":
            parser.add_argument(flag, required=True, help="teacher checkpoint or registry name (e.g. an official 2DFAN-4 .pth.tar)")
            continue
        kind = type(default) if default is not None else (int if f.name == "input_size" else float if f.name in (
            "reference_scale", "center_shift", "max_minutes", "max_label_disagreement") else int if f.name == "max_batches" else str)
        if f.name == "init":
            parser.add_argument(flag, default=None, metavar="CKPT",
                                help="start from this checkpoint's or zoo model's weights (same width; any input size; "
                                     "extra stacks copy its last stack)")
            continue
        parser.add_argument(flag, type=_SPEC_TYPES.get(f.name, kind), default=default, help=f"default: {default}")


def _spec_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainSpec fields a training-like command's flags set (fan-train, fan-distill, fan-prune, fan-quantize --qat)."""
    import dataclasses

    from .train.spec import TrainSpec

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSpec) if hasattr(args, f.name)}


def _training_exit(result: dict[str, Any]) -> int:
    """A stop the user asked for (--max-minutes, --max-batches) is a success; a signal is not."""
    return 130 if result.get("reason") == "signal" else 0


def _train_parser(distill: bool) -> argparse.ArgumentParser:
    prog = "fan-distill" if distill else "fan-train"
    desc = (
        "Train a FAN student against a teacher's heatmaps (and ground truth where .pts exist)."
        if distill
        else "Train a FAN variant on folders of images with .pts (heatmap loss on every stack)."
    )
    parser = argparse.ArgumentParser(prog=prog, description=desc)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start from scratch")
    _spec_arguments(parser, distill)

    def handler(args: argparse.Namespace) -> int:
        from .train import TrainSpec, train

        return _training_exit(train(TrainSpec(**_spec_values(args)), resume=not args.fresh))

    parser.set_defaults(handler=handler)
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-train", lambda: _train_parser(distill=False), argv)


def distill_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-distill", lambda: _train_parser(distill=True), argv)


# fan-prune's fine-tuning defaults: the bundled default's own recipe (AdamW with weight decay keeps int8 export working).
PRUNE_TRAIN_DEFAULTS = {"out": "runs/prune", "epochs": 30, "lr": 5e-4, "loss": "awing", "optimizer": "adamw",
                        "weight_decay": 0.05, "rotation": 30.0, "scale_min": 0.85, "val_every": 5}


def _prune_parser() -> argparse.ArgumentParser:
    """``fan-prune``: structured pruning (channels via DepGraph, whole stacks), then distillation from the unpruned model."""
    parser = argparse.ArgumentParser(
        prog="fan-prune",
        description="Physically remove channels (torch-pruning's DepGraph keeps FAN's coupled channels together) and/or "
        "stacks, write OUT/pruned.safetensors, then fine-tune it against the unpruned model (OUT/final.safetensors). "
        "The same command again resumes. See docs/compression.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--fresh", action="store_true", help="prune again and restart the fine-tuning, ignoring OUT's files")
    parser.add_argument("--ratio", type=float, metavar="R", help="fraction of every coupled channel group to remove, in (0, 1)")
    parser.add_argument("--stacks", type=int, metavar="K", help="keep only the first K stacks (the early exit)")
    parser.add_argument("--group-ratio", action="append", default=[], metavar="GROUP=R",
                        help="ratio of one group (stem, stem_blocks, trunk, head0...; 0 keeps it whole); repeatable")
    parser.add_argument("--importance", choices=("l2", "l1"), default="l2", help="channel importance: group L2 or L1 norm (default l2)")
    parser.add_argument("--round-to", type=int, metavar="N", help="round every group's width to a multiple of N")
    parser.add_argument("--teacher", help="distillation teacher (default: the unpruned --model)")
    _spec_arguments(parser, distill=False)
    actions = {a.dest: a for a in parser._actions}
    actions["model"].help = "model to prune: registry name or checkpoint (default: default); also the teacher"
    actions["data"].required = False  # --epochs 0 prunes only
    parser.set_defaults(**PRUNE_TRAIN_DEFAULTS)
    for name, value in PRUNE_TRAIN_DEFAULTS.items():
        actions[name].help = f"default: {value}"
    if "init" in actions:  # a warm start would replace the pruned weights
        actions["init"].help = argparse.SUPPRESS

    def handler(args: argparse.Namespace) -> int:
        from .atomic import check_writable
        from .errors import ConfigError
        from .quantize.pruning.job import PruneSpec, command_line, run_prune
        from .train import TrainSpec

        if args.ratio is None and args.stacks is None and not args.group_ratio:
            raise ConfigError("nothing to prune: give --ratio R, --stacks K or both")
        if getattr(args, "init", None):
            raise ConfigError("--init would replace the pruned weights; fan-prune fine-tunes the pruned model itself")
        ratios: dict[str, float] = {}
        for item in args.group_ratio:
            name, sep, value = item.partition("=")
            try:
                ratios[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep:
                raise ConfigError(f"--group-ratio takes GROUP=R (e.g. trunk=0.3), got {item!r}")
        if ratios and args.ratio is None:
            raise ConfigError("--group-ratio refines --ratio: give --ratio too (the other groups' ratio)")
        spec = PruneSpec(model=args.model, ratio=args.ratio, stacks=args.stacks, ratios=ratios, importance=args.importance,
                         round_to=args.round_to, teacher=args.teacher)
        values = _spec_values(args)
        values["data"] = values["data"] or []
        check_writable(values["out"], "--out", kind="folder")  # before the model loads and the pruning runs
        argv = sys.argv[1:] if args.argv is None else args.argv
        result = run_prune(spec, TrainSpec(**values), fresh=args.fresh, command=command_line(list(argv)),
                           log=lambda msg: print(msg, file=sys.stderr))
        return _training_exit(result)

    parser.set_defaults(handler=handler, argv=None)
    return parser


def _run_built(prog: str, build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
               record_argv: bool = False) -> int:
    """Build a command's parser and run it; a parser that needs a missing extra (its flags come from torch-side
    modules) is the same one-line error as a handler that does."""
    try:
        parser = build()
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None or "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return _run_recording_argv(parser, argv) if record_argv else _run(parser, argv)


def _run_recording_argv(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Run a command whose card records its own command line (the argv given, else sys.argv)."""
    if argv is not None:
        parser.set_defaults(argv=list(argv))
    return _run(parser, argv)


def prune_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-prune", _prune_parser, argv, record_argv=True)


def _export_parser() -> argparse.ArgumentParser:
    """``fan-export``: a FAN to ONNX / OpenVINO / TFLite / Core ML artifacts with their contract, checked against PyTorch."""
    from .export.exporter import TARGETS

    parser = argparse.ArgumentParser(
        prog="fan-export",
        description="Export a FAN to a deployable artifact (contract inside and in ARTIFACT.json), "
        "then check it against the PyTorch model on real faces. Exit 1 when the accuracy check fails "
        "(the artifact is kept; its sidecar says 'failed accuracy').",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--target", required=True, metavar="{" + ",".join(TARGETS) + "}",
                        help="format; a comma list exports several (then --output is a folder)")
    _model_arg(parser, positional=False)
    parser.add_argument("--precision", default="fp32", metavar="{fp32,fp16,int8}", help="default fp32; a comma list exports several")
    parser.add_argument("--calib", metavar="DIR", help="calibration faces (images with .pts) for int8; also the default --verify folder")
    parser.add_argument("--calib-faces", type=int, default=128, metavar="N", help="faces used for int8 calibration, spread over the folder (default 128)")
    parser.add_argument("--input-size", type=input_size_arg, metavar="N",
                        help=f"override the model's input resolution (up to {MAX_INPUT_SIZE})")
    parser.add_argument("--outputs", choices=("heatmaps", "landmarks"), default="heatmaps",
                        help="heatmaps (default), or landmarks: decoding inside the graph, (x, y) crop pixels and scores")
    parser.add_argument("--output", metavar="PATH", help="artifact path (or folder); default ./NAME-PRECISION[-landmarks].SUFFIX")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", metavar="DIR", help="faces for the parity check (default: --calib, else ../shared/data/300w/afw)")
    verify.add_argument("--no-verify", action="store_true", help="skip the parity check")
    parser.add_argument("--verify-faces", type=int, default=None, metavar="N",
                        help="faces for the parity check, spread over the folder (default 64; 8 for --device npu, whose "
                        "check runs on an emulator of the chip at seconds per face)")
    parser.add_argument("--int8-float", action="append", metavar="LAYER",
                        help="int8: keep this layer (PyTorch module name or regex, e.g. conv_last1) float instead of the "
                        "recipe's choice; repeatable (fan-quantize --sensitivity recommends them)")
    parser.add_argument("--int8-activations", type=int, choices=(8, 16), default=None, metavar="BITS",
                        help="ONNX int8: 16 keeps int8 weights with 16-bit activations (W8A16; Qualcomm's NPU runs it "
                        "natively) for a model whose 8-bit activations fail the parity check (default: what the model "
                        "card measured for the device, else 8)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="compile for an NPU too: npu (Qualcomm Hexagon via ONNX Runtime QNN; with --target onnx "
                        "--precision int8 and --soc) or ethos-u55-128, ethos-u65-256, ethos-u85-256... (Arm, Vela; with "
                        "--target tflite --precision int8); static batch 1, full offload required (docs/npu.md)")
    parser.add_argument("--soc", metavar="CHIP", help="Snapdragon for --device npu: SM8650 (default), SM8550, SM8750, "
                        "SC8380XP..., or a QNN soc_model number")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")

    def handler(args: argparse.Namespace) -> int:
        from .export.exporter import export_model, format_table, format_npu, results_json

        results = export_model(
            args.model,
            args.target,
            args.precision,
            outputs=args.outputs,
            output=args.output,
            calib=args.calib,
            calib_faces=args.calib_faces,
            input_size=args.input_size,
            verify=False if args.no_verify else args.verify,
            verify_faces=args.verify_faces,
            trust=args.trust,
            log=None if args.json else (lambda msg: print(msg, file=sys.stderr)),
            int8_float=args.int8_float,
            device=args.device,
            soc=args.soc,
            int8_activations=args.int8_activations,
        )
        if args.json:
            print(results_json(results))
        else:
            first = next((r.parity for r in results if r.parity), None)
            if first is not None:
                print(f"\nparity with PyTorch on {first.faces} faces of {first.data} (boxes from ground-truth points; px are crop pixels), "
                      f"on {first.backend_device}, CPU: {first.cpu_label}")
            print(format_table(results))
            for r in results:
                if r.npu is not None:
                    print(format_npu(r))
            for r in results:
                if r.parity is not None and not r.parity.passed:
                    print(f"{r.path}: failed accuracy: {r.parity.failure} (artifact kept)", file=sys.stderr)
        return 0 if all(r.ok for r in results) else 1

    parser.set_defaults(handler=handler)
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-export", _export_parser, argv)


def _profile_parser() -> argparse.ArgumentParser:
    """``fan-profile``: one fan-bench row measured on an Android device (adb) or a Linux edge box (ssh)."""
    parser = argparse.ArgumentParser(
        prog="fan-profile",
        description="Latency of an exported artifact on a real device, as a fan-bench row (docs/profile.md). "
        "Exit 0 when timed, 1 when the artifact failed there, 3 when the device asked for is absent there.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(metavar="{adb,ssh}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=threads_arg, metavar="N",
                       help=f"inference threads (1..{MAX_THREADS}; default: the runtime's own)")
        p.add_argument("--runs", type=int, default=100, metavar="N", help="timed runs (default 100)")
        p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
        p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="limit for each step in seconds (default 600)")
        out = p.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help='print {"rows": [ROW]} as fan-bench --json does')
        out.add_argument("--csv", action="store_true", help="print a header line and the row (fan-bench's columns first)")

    p = sub.add_parser("adb", help="an Android device over adb, timed by LiteRT's benchmark_model")
    p.add_argument("artifact", help=".tflite exported by fan-export (its .json sidecar, if present, names the row)")
    p.add_argument("--benchmark-binary", required=True, metavar="PATH",
                   help="benchmark_model built for the device (e.g. LiteRT's android_arm64 benchmark_model); pushed with the model")
    p.add_argument("--serial", help="device serial (required when several are attached; see adb devices)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=None,
                   help="force the XNNPACK CPU delegate on or off (default: the tool's own choice)")
    p.add_argument("--gpu", action="store_true", help="GPU delegate (--use_gpu=true)")
    p.add_argument("--nnapi", action="store_true", help="NNAPI delegate (--use_nnapi=true)")
    p.add_argument("--op-profiling", action="store_true", help="--enable_op_profiling=true (per-op table in --log; slows every run)")
    p.add_argument("--no-peak-memory", action="store_true", help="do not pass --report_peak_memory_footprint=true")
    p.add_argument("--benchmark-arg", action="append", default=[], metavar="FLAG", help="extra benchmark_model flag, e.g. --benchmark-arg=--use_npu=true (repeatable)")
    p.add_argument("--taskset", metavar="MASK", help="pin benchmark_model to these cores (device taskset mask, e.g. f0)")
    p.add_argument("--adb", default="adb", metavar="PATH", help="adb executable (default: adb on PATH)")
    p.add_argument("--remote-dir", default="/data/local/tmp", help="device folder for the pushed files (default /data/local/tmp)")
    p.add_argument("--keep", action="store_true", help="leave the pushed binary and model on the device")
    p.add_argument("--log", metavar="FILE", help="save benchmark_model's full output here")
    common(p)

    def adb_handler(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .bench.profile import AdbOptions, profile_adb

        options = AdbOptions(serial=args.serial, threads=args.threads, xnnpack=args.xnnpack, gpu=args.gpu, nnapi=args.nnapi,
                             runs=args.runs, warmup=args.warmup, peak_memory=not args.no_peak_memory, op_profiling=args.op_profiling,
                             extra_args=tuple(args.benchmark_arg), taskset=args.taskset, remote_dir=args.remote_dir, adb=args.adb, timeout_s=args.timeout,
                             keep=args.keep, log=Path(args.log) if args.log else None)
        return _print_profile(profile_adb(args.artifact, args.benchmark_binary, options), args)

    p.set_defaults(handler=adb_handler)

    p = sub.add_parser("ssh", help="a Linux edge box over ssh, timed there by python -m fan_edge.runtime.bench")
    p.add_argument("artifact", help=".onnx, .xml (with its .bin) or .tflite exported by fan-export; copied with its .json sidecar")
    p.add_argument("--host", required=True, help="[user@]host, or a Host alias of your ssh config")
    p.add_argument("--port", type=int, help="ssh port (default: ssh's own, i.e. 22 or your config)")
    p.add_argument("--user", help="remote user (default: from --host, your ssh config, or your login)")
    p.add_argument("--identity", metavar="KEY", help="private key file (ssh -i)")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh config file (ssh -F; default ~/.ssh/config)")
    p.add_argument("-o", "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh/scp option (repeatable)")
    p.add_argument("--connect-timeout", type=int, default=10, metavar="S", help="ssh ConnectTimeout (default 10)")
    p.add_argument("--python", default="python3", help="remote interpreter with fan-edge installed (default python3; a shell word, e.g. ~/venv/bin/python)")
    p.add_argument("--backend", default="auto", help="auto (by suffix), onnxruntime, openvino or litert")
    p.add_argument("--device", default="auto", help="auto or cpu, gpu, npu (as the remote runtime names them)")
    common(p)

    def ssh_handler(args: argparse.Namespace) -> int:
        from .bench.profile import SshOptions, profile_ssh

        options = SshOptions(host=args.host, port=args.port, user=args.user, identity=args.identity, ssh_config=args.ssh_config,
                             ssh_options=tuple(args.ssh_option), python=args.python, backend=args.backend, device=args.device,
                             threads=args.threads, runs=args.runs, warmup=args.warmup, connect_timeout_s=args.connect_timeout,
                             timeout_s=args.timeout)
        return _print_profile(profile_ssh(args.artifact, options), args)

    p.set_defaults(handler=ssh_handler)
    return parser


def _print_profile(row: dict[str, Any], args: argparse.Namespace) -> int:
    """Print one fan-profile row as asked; the exit status follows fan_edge.runtime.bench (0 timed, 1 failed, 3 device absent)."""
    from .bench.profile import ordered_row
    from .bench.profile.output import format_row
    from .runtime.bench import STATUS_DEVICE_ABSENT, STATUS_PASSED

    row = ordered_row(row)
    print(format_row(row, "json" if args.json else "csv" if args.csv else "table"))
    return 0 if row["status"] == STATUS_PASSED else 3 if row["status"] == STATUS_DEVICE_ABSENT else 1


def profile_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-profile", _profile_parser, argv)


def _bench_parser() -> argparse.ArgumentParser:
    """``fan-bench``: accuracy against latency for models x targets x precisions, or existing artifacts."""
    from .bench.targets import DEFAULT_TARGETS

    parser = argparse.ArgumentParser(
        prog="fan-bench",
        description="Export as needed, then measure every model x target (or --artifact): status, size, NME, AUC@7, FR@7, "
        "latency p50/p90 (batch 1, fixed threads, a fresh process per row), FPS, speed-up against PyTorch eager fp32, peak memory. "
        "Exit 1 when a row failed. See docs/bench.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--model", action="append", metavar="NAME", help="registry name or checkpoint; repeatable or a comma list "
                        "(default: default, unless only --artifact is given)")
    parser.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")
    parser.add_argument("--targets", action="append", metavar="SPEC",
                        help=f"runtime:precision[@device] comma list (runtimes torch, onnxruntime, openvino, litert; "
                        f"precisions fp32, fp16, int8; devices cpu, gpu, npu); default {DEFAULT_TARGETS}")
    parser.add_argument("--artifact", action="append", default=[], metavar="PATH", help="an exported artifact to bench as it is; repeatable")
    parser.add_argument("--data", metavar="DIR", help="faces with .pts to score every row on (without it: latency only)")
    parser.add_argument("--faces", type=int, metavar="N", help="score N faces spread over --data (default: all)")
    parser.add_argument("--calib", metavar="DIR", help="int8 calibration faces (default: ../shared/data/300w/helen_train beside the "
                        "checkout if present, else --data)")
    parser.add_argument("--calib-faces", type=int, default=128, metavar="N", help="faces used for int8 calibration (default 128)")
    parser.add_argument("--threads", type=threads_arg, default=2,
                        help=f"intra-op threads of every runtime (1..{MAX_THREADS}; default 2)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per row (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--out", default="fan-bench-artifacts", metavar="DIR", help="where artifacts are exported and reused (default ./fan-bench-artifacts)")
    parser.add_argument("--fresh", action="store_true", help="re-export even when --out holds the same export")
    parser.add_argument("--no-verify-export", action="store_true", help="skip the exporter's own parity check (the benchmark still scores every row)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="limit per timing process (default 1800 s)")
    parser.add_argument("--soc", metavar="CHIP", help="Snapdragon of onnxruntime:int8@npu rows (default SM8650; QNN emulator)")
    parser.add_argument("--npu-faces", type=int, default=64, metavar="N",
                        help="faces scored on the QNN emulator, with PyTorch on the same faces (seconds each; default 64)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON {\"rows\": [...]} on stdout instead of the table, or to PATH")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--plot", metavar="PNG", help="also write the Pareto plot (NME against latency, log scale)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")

    def handler(args: argparse.Namespace) -> int:
        import os
        from pathlib import Path

        from .atomic import check_writable
        from .bench.pareto import plot_pareto
        from .bench.report import format_table, to_json, write_csv, write_json
        from .bench.runner import BenchOptions, default_calib_dir, run_bench
        from .bench.targets import parse_targets
        from .errors import BenchError
        from .runtime.cpu import cpu_label, cpu_record
        from .runtime.bench import STATUS_FAILED

        missing = [a for a in args.artifact if not Path(a).exists()]
        if missing:  # a typo is bad input, not a benchmark result (run_bench itself makes it a failed row)
            raise BenchError(f"--artifact {missing[0]}: no such file")
        # Where the results go, checked before the benchmark runs (its files are written at the end).
        check_writable(args.out, "--out", kind="folder")
        for flag, path in (("--csv", args.csv), ("--plot", args.plot), ("--json", None if args.json == "-" else args.json)):
            if path:
                check_writable(path, flag)
        models = [m.strip() for text in (args.model or []) for m in text.split(",") if m.strip()]
        if not models and not args.artifact:
            models = ["default"]
        data = Path(args.data) if args.data else None
        calib = Path(args.calib) if args.calib else (default_calib_dir() or data)
        options = BenchOptions(
            models=models, targets=parse_targets(args.targets or [DEFAULT_TARGETS]), artifacts=list(args.artifact),
            data=data, calib=calib, calib_faces=args.calib_faces, faces=args.faces, threads=args.threads, runs=args.runs,
            warmup=args.warmup, out=Path(args.out), verify_export=not args.no_verify_export, fresh=args.fresh, trust=args.trust,
            timeout_s=args.timeout, soc=args.soc, npu_faces=args.npu_faces,
        )
        load_before = os.getloadavg()
        rows = run_bench(options, log=lambda msg: print(msg, file=sys.stderr))
        settings = {
            "data": str(data) if data else None, "faces": args.faces, "calib": str(calib) if calib else None, "threads": args.threads,
            "runs": args.runs, "warmup": args.warmup, "batch": 1, "cpu": cpu_label(), "cpus": os.cpu_count(), "cpu_record": cpu_record(),
            "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        }
        if args.csv:
            print(f"wrote {write_csv(args.csv, rows)}", file=sys.stderr)
        if args.plot:
            print(f"wrote {plot_pareto(rows, args.plot)}", file=sys.stderr)
        if args.json == "-":
            print(to_json(rows, settings))
        else:
            if args.json:
                print(f"wrote {write_json(args.json, rows, settings)}", file=sys.stderr)
            print(format_table(rows, markdown=args.markdown))
            print(f"\n{settings['cpu']}, threads {args.threads}, batch 1, {args.runs} runs after {args.warmup}; "
                  f"load average {settings['loadavg_1min_before_after'][0]} -> {settings['loadavg_1min_before_after'][1]}")
        return 1 if any(r["status"] == STATUS_FAILED for r in rows) else 0

    parser.set_defaults(handler=handler)
    return parser


def bench_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-bench", _bench_parser, argv)


# fan-quantize --qat fine-tuning defaults: a short, gentle schedule from a converged model (AdamW, the zoo recipe's
# augmentation), distilled from the float model itself.
QAT_TRAIN_DEFAULTS = {"epochs": 4, "lr": 2e-5, "loss": "awing", "optimizer": "adamw", "weight_decay": 0.0, "warmup_epochs": 0.2,
                      "rotation": 30.0, "scale_min": 0.85, "val_every": 1}


def _quantize_parser() -> argparse.ArgumentParser:
    """``fan-quantize``: the per-layer int8 sensitivity report, or quantization-aware training (NNCF)."""
    parser = argparse.ArgumentParser(
        prog="fan-quantize",
        description="--sensitivity: rank the model's layers by the ΔNME their int8 alone causes (simulated), write "
        "OUT/sensitivity.json and .md, recommend the layers to keep float. --qat: quantization-aware training with NNCF "
        "into OUT (resumable: the same command continues); export the result with fan-export --precision int8. "
        "--report: the compression table (float, PTQ, QAT, pruned, pruned+QAT) from fan-bench JSON rows. "
        "See docs/quantization.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sensitivity", action="store_true", help="per-layer sensitivity report (--data: faces to score on)")
    mode.add_argument("--qat", action="store_true", help="quantization-aware training (--data: training faces)")
    mode.add_argument("--report", action="store_true", help="compression report from fan-bench JSON rows (--bench, --float, "
                      "--qat-model, --pruned, --pruned-qat)")
    parser.add_argument("--bench", action="append", default=[], metavar="JSON", help="--report: fan-bench JSON file; repeatable")
    parser.add_argument("--float", dest="float_model", metavar="MODEL", help="--report: the float model as the rows name it")
    parser.add_argument("--qat-model", metavar="MODEL", help="--report: its quantization-aware-trained checkpoint")
    parser.add_argument("--pruned", metavar="MODEL", help="--report: a pruned checkpoint")
    parser.add_argument("--pruned-qat", metavar="MODEL", help="--report: the pruned checkpoint after QAT")
    parser.add_argument("--fresh", action="store_true", help="--qat: start over, ignoring OUT/last.ckpt")
    parser.add_argument("--calib", metavar="DIR", help="calibration faces (default: the first --data folder)")
    parser.add_argument("--calib-faces", type=int, default=128, metavar="N", help="calibration faces, chosen to cover pose and lighting (default 128)")
    parser.add_argument("--keep-float", action="append", default=[], metavar="LAYER",
                        help="--qat: keep this layer (module name or regex) float while training (the artifacts: "
                        "fan-export --int8-float); repeatable (default: none)")
    parser.add_argument("--teacher", default="self", help="--qat: distillation teacher: 'self' (the float --model, default), "
                        "a registry name or checkpoint, or 'none'")
    parser.add_argument("--faces", type=int, default=64, metavar="N",
                        help="--sensitivity: faces scored, spread over --data (default 64; 0: all of them)")
    parser.add_argument("--scheme", choices=("full", "conv"), default="full",
                        help="--sensitivity: what is quantized: full (convolutions and the residual stream, as TFLite) or conv "
                        "(convolutions only, as ONNX Runtime)")
    parser.add_argument("--budget", type=float, default=0.05, metavar="PP", help="--sensitivity: |ΔNME| the recommendation must reach (default 0.05)")
    parser.add_argument("--estimator", choices=("mean", "minmax"), default="mean",
                        help="--sensitivity: activation ranges: mean of per-face extremes (the export recipe) or global min/max")
    _spec_arguments(parser, distill=False)
    actions = {a.dest: a for a in parser._actions}
    actions["out"].default = None
    actions["out"].help = "output folder (default runs/qat, runs/sensitivity or runs/compression)"
    actions["data"].required = False  # --sensitivity and --qat check it; --report reads no faces
    parser.set_defaults(**QAT_TRAIN_DEFAULTS)
    for name, value in QAT_TRAIN_DEFAULTS.items():
        actions[name].help = f"--qat, default: {value}"

    def handler(args: argparse.Namespace) -> int:
        import shlex
        from pathlib import Path

        from .atomic import check_writable, write_text_atomic
        from .calibration import FaceCrops, calibration_faces
        from .errors import ConfigError
        from .models import create_model

        if args.report:
            from .quantize.report import compression_rows, fastest_summary, format_fastest, format_markdown, read_bench_rows

            models = {k: v for k, v in {"float": args.float_model, "qat": args.qat_model, "pruned": args.pruned,
                                        "pruned+qat": args.pruned_qat}.items() if v}
            if not args.bench or "float" not in models:
                raise ConfigError("--report needs --bench JSON (fan-bench rows) and --float MODEL")
            bench_rows = read_bench_rows(args.bench)
            report = compression_rows(bench_rows, models)
            summary = fastest_summary(bench_rows, report)
            text = format_markdown(report) + "\n" + format_fastest(summary)
            out = Path(args.out or "runs/compression")
            write_text_atomic(out / "compression.json", json.dumps({"models": models, "rows": report, "fastest": summary}, indent=2) + "\n")
            write_text_atomic(out / "compression.md", text)
            print(text)
            print(f"wrote {out / 'compression.json'} and {out / 'compression.md'}")
            return 0
        if not args.data:
            raise ConfigError("--data DIR is required (faces to score on with --sensitivity, training faces with --qat)")

        if args.sensitivity:
            from .quantize.sensitivity import measure_sensitivity

            out = check_writable(args.out or "runs/sensitivity", "--out", kind="folder")  # before the long measurement
            model = create_model(args.model).eval()
            cfg = model.config
            calib = calibration_faces(args.calib or args.data[0], cfg.input_size, cfg.crop, args.calib_faces)
            faces = FaceCrops(args.data[0], cfg.input_size, cfg.crop, count=args.faces or None, seed=1)
            report = measure_sensitivity(model, calib, faces, name=str(args.model), scheme=args.scheme, estimator=args.estimator,
                                         budget=args.budget, log=lambda msg: print(msg, file=sys.stderr))
            write_text_atomic(out / "sensitivity.json", report.to_json())
            write_text_atomic(out / "sensitivity.md", report.to_markdown(top=len(report.layers)))
            print(report.to_markdown())
            print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.md'} ({report.seconds:.0f} s)")
            return 0

        from .quantize.qat import QATSpec, train_qat
        from .train import TrainSpec

        values = _spec_values(args)
        values["out"] = args.out or "runs/qat"
        check_writable(values["out"], "--out", kind="folder")  # before the model loads and training starts
        values["teacher"] = None if args.teacher == "none" else (args.model if args.teacher == "self" else args.teacher)
        spec = QATSpec(TrainSpec(**values), calib=args.calib, calib_faces=args.calib_faces, keep_float=list(args.keep_float))
        argv = sys.argv[1:] if args.argv is None else args.argv
        result = train_qat(spec, resume=not args.fresh, command=" ".join(shlex.quote(a) for a in ["fan-quantize", *argv]),
                           log_fn=lambda msg: print(msg, file=sys.stderr))
        return _training_exit(result)

    parser.set_defaults(handler=handler, argv=None)
    return parser


def quantize_main(argv: Sequence[str] | None = None) -> int:
    return _run_built("fan-quantize", _quantize_parser, argv, record_argv=True)


if __name__ == "__main__":
    sys.exit(main())
