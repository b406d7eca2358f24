"""``fan-edge predict``: 68 landmarks of every face in a photo (:func:`fan_edge.predict.predict_photo`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..limits import MAX_THREADS, threads_arg
from .common import stderr, trust_arg


def cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import check_image_output, draw_faces, parse_boxes, predict_photo, write_image

    if args.out:
        check_image_output(args.out)  # before the photo is decoded and the model run
    boxes = parse_boxes(args.boxes) if args.boxes is not None else None
    result, image = predict_photo(
        args.image, args.model, boxes, backend=args.backend, device=args.device, threads=args.threads,
        refine_passes=args.refine_passes, scan_size=args.scan_size, min_score=args.min_score, trust=args.trust, log=stderr,
    )
    if args.out:
        write_image(args.out, draw_faces(image, result.faces))
    if result.below_min_score:
        scores = ", ".join(f"{s:.2f}" for s in result.below_min_score)
        stderr(f"{args.image}: {len(result.below_min_score)} detection(s) below --min-score {result.min_score:g} left out "
               f"(scores {scores}); lower --min-score to keep them, or pass --boxes")
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    faces = result.faces
    found = "detected" if result.detected else "given"
    print(f"{args.image}: {len(faces.boxes)} face(s) {found}; {result.artifact.name} on {result.backend} ({result.device})")
    for i, box in enumerate(faces.boxes):
        detector = "" if faces.detector_scores is None else f"  detector score {float(faces.detector_scores[i]):.2f}"
        print(f"face {i}: box {', '.join(f'{v:.1f}' for v in box)}{detector}  mean point score {float(faces.scores[i].mean()):.3f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def add_predict(sub: Any) -> None:
    from ..runtime.detect import MIN_SCORE, MIN_SCORE_CHOICE, SCAN_SIZE

    p = sub.add_parser("predict", help="68 landmarks of every face in a photo (faces detected unless --boxes), drawn with --out")
    p.add_argument("image", help="a photo (.jpg, .png, ...; 8- or 16-bit, grey, RGB or RGBA)")
    p.add_argument("--model", default="default", help="exported artifact (.onnx, .xml, .tflite), or a registry name or checkpoint "
                   "(exported once to the cache, ~/.cache/fan-edge; default: the bundled default)")
    trust_arg(p)
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
                   help=f"long side the photo is resized to for detection (default {SCAN_SIZE}; a smaller photo is enlarged to it; raise it "
                   "for small faces in big photos)")
    p.add_argument("--min-score", type=float, default=MIN_SCORE, metavar="S",
                   help=f"keep detected faces whose dlib HOG score is at least S (default {MIN_SCORE:g}; ignored with --boxes). "
                   f"{MIN_SCORE_CHOICE.replace('%', '%%')} Lower it to find more hard faces, raise it for fewer false ones")
    p.set_defaults(handler=cmd_predict)
