"""A stand-in for a Python with litert-torch: answers the converter's ``check`` and ``convert`` commands.

The tests run it as the ``--litert_torch_python`` program (through a small shell wrapper), so
pf_keras_export's subprocess plumbing, caching and rows are exercised without torch. It is
called as ``PROGRAM CONVERTER {check,convert} ...`` exactly like the real Python, checks that
CONVERTER is the shipped litert_torch_convert.py, and "converts" by copying the port's own
LiteRT file of the same model and precision (a real .tflite) from ``STAND_IN_SOURCE_DIR``.

Environment: ``STAND_IN_SOURCE_DIR`` (where ``{model}_{precision}.tflite`` are), ``STAND_IN_LOG``
(one line per conversion appended), ``STAND_IN_FAIL`` (comma-separated ``model:precision`` that
fail), ``STAND_IN_MISSING`` (comma-separated models the "checkout" lacks), ``STAND_IN_GARBAGE``
(write a file that is not a .tflite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

MODELS = ("resnet50", "resnet50_max", "resnet50_hybrid", "vit_ti_max", "vit_s_max", "vit_b_max", "pit_ti_max",
          "pit_s_max", "pit_b_max")


def _set(name: str) -> set[str]:
    return {v for v in os.environ.get(name, "").split(",") if v}


def main(argv: list[str]) -> int:
    converter, argv = argv[0], argv[1:]
    if os.path.basename(converter) != "litert_torch_convert.py" or not os.path.isfile(converter):
        print(f"stand-in: not the shipped converter: {converter}", file=sys.stderr)
        return 3
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("check", "convert"))
    parser.add_argument("--pflayer_dir", required=True)
    parser.add_argument("--model")
    parser.add_argument("--precision")
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--calibration")
    parser.add_argument("--output")
    flags = parser.parse_args(argv)
    print("progress chatter on stdout, as litert-torch prints")
    if flags.command == "check":
        missing = _set("STAND_IN_MISSING")
        models = {m: ("ModuleNotFoundError: stand-in" if m in missing else "ok") for m in MODELS}
        print(json.dumps({"torch": "stand-in", "litert_torch": "stand-in", "models": models}))
        return 0
    if f"{flags.model}:{flags.precision}" in _set("STAND_IN_FAIL"):
        print(f"litert_torch_convert: RuntimeError: stand-in cannot convert {flags.model} {flags.precision}",
              file=sys.stderr)
        return 1
    calibration = None
    if flags.precision == "int8":
        images = np.load(flags.calibration, allow_pickle=False)
        assert images.dtype == np.float32 and images.shape[1:] == (flags.image_size, flags.image_size, 3)
        calibration = len(images)
    with open(os.environ["STAND_IN_LOG"], "a") as log:
        log.write(f"{flags.model} {flags.precision} {flags.image_size} {calibration}\n")
    if os.environ.get("STAND_IN_GARBAGE"):
        with open(flags.output, "wb") as f:
            f.write(b"not a flatbuffer")
    else:
        source = os.path.join(os.environ["STAND_IN_SOURCE_DIR"], f"{flags.model}_{flags.precision}.tflite")
        if not os.path.exists(source):  # e.g. dynamic where the port exported fp32 and int8 only
            source = os.path.join(os.environ["STAND_IN_SOURCE_DIR"], f"{flags.model}_fp32.tflite")
        shutil.copyfile(source, flags.output)
    print(json.dumps({"model": flags.model, "precision": flags.precision, "torch": "stand-in",
                      "litert_torch": "stand-in"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
