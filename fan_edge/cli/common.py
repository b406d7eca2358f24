"""What every command shares: one-line errors and exit codes, the model argument, the checkout's data defaults.

Exit codes: 0 success, 1 a result that failed (an accuracy check, a benchmark row), 2 an error the user can
fix (a :class:`~fan_edge.errors.FanEdgeError`, a usage error, running out of memory, a missing extra), 130
interrupted. Each error is one line on stderr, ``PROG: error: MESSAGE``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ..errors import FanEdgeError
from ..extras import missing_extra

# The checkout's data folder (the 300-W faces, docs and tests use it): ``../shared/data`` beside the checkout, else
# beside the working directory. Only the CLI's documented defaults look there; library functions take explicit paths.
CHECKOUT = Path(__file__).resolve().parents[2]
SHARED_DATA = ("..", "shared", "data")
# Under SHARED_DATA: the int8 calibration faces (HELEN training faces) and the faces a parity check is scored on
# (AFW, which no zoo model trained on), for fan-export and fan-bench when no flag names a folder.
DEFAULT_CALIB = ("300w", "helen_train")
DEFAULT_VERIFY = ("300w", "afw")


def shared_data(*parts: str) -> Path | None:
    """``../shared/data/PARTS`` beside the checkout, else beside the working directory, when that folder exists."""
    for base in (CHECKOUT, Path.cwd()):
        candidate = base.joinpath(*SHARED_DATA, *parts).resolve()
        if candidate.is_dir():
            return candidate
    return None


def stderr(message: str) -> None:
    """Progress and notes: stderr, so that stdout stays the result (a table, or JSON)."""
    print(message, file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (an option missing, malformed or not among its choices) in one line too.

    argparse prints the whole usage before its error line; the usage stays one ``--help`` away. Subcommand
    parsers are of the same class (``add_subparsers`` makes them with its parser's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def model_arg(parser: argparse.ArgumentParser, positional: bool = True, artifacts: bool = False) -> None:
    help_text = "registry name (see `fan-edge models`) or checkpoint path (.safetensors, .pth.tar, TorchScript .zip)"
    if artifacts:
        help_text = help_text.replace(" or checkpoint", ", checkpoint") + ", or exported artifact (.onnx, .xml, .tflite)"
    if positional:
        parser.add_argument("model", nargs="?", default="default", help=help_text)
    else:
        parser.add_argument("--model", default="default", help=help_text)
    trust_arg(parser)


def trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust", action="store_true", help="allow TorchScript archives, which run code on loading")


def debug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def one_line(exc: BaseException) -> str:
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


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: Python's MemoryError, or torch's CPU and CUDA allocators' errors."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and call the handler the parser set; a user's error is one line and exit 2."""
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
        print(f"{parser.prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        # The bounds of fan_edge.limits keep every single size sane; a combination of them (a big batch of big
        # inputs on a small machine) can still run out of memory, and that is one line too, not a traceback.
        if args.debug or not out_of_memory(exc):
            raise
        print(f"{parser.prog}: error: out of memory ({one_line(exc)[:160]}); try a smaller batch, input size or model",
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


def run_built(prog: str, build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
              record_argv: bool = False) -> int:
    """Build a command's parser and run it; a parser that needs a missing extra (its flags come from torch-side
    modules) is the same one-line error as a handler that does. ``record_argv``: the handler gets ``args.argv``,
    the command line its card records (the argv given, else sys.argv)."""
    try:
        parser = build()
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None or "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    if record_argv:
        parser.set_defaults(argv=None if argv is None else list(argv))
    return run(parser, argv)


def command_argv(args: argparse.Namespace) -> list[str]:
    """The command line a run records: the argv the entry point was given, else the process's."""
    return sys.argv[1:] if getattr(args, "argv", None) is None else list(args.argv)
