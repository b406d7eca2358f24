"""Fuzz checkpoint loading (read_checkpoint, infer_config, load_weights, read_training_state) with atheris.

    python fuzz/fuzz_checkpoint.py fuzz/corpus/checkpoint -max_total_time=60

Anything but a FanEdgeError (or success) is a crash, and so is a pickle payload that ran. See fuzz/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import main  # noqa: E402

if __name__ == "__main__":
    main("checkpoint", [f"{sys.executable} {Path(__file__).resolve()}", *sys.argv[1:]])
