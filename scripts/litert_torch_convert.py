"""Converts the official PyTorch ResNets (a PfLayer checkout) to LiteRT with litert-torch (the PyTorch route).

Runs under a Python with torch and ``litert-torch`` (not this project's environment) and
imports the official code from the checkout, never copied here:

    /path/to/litert-venv/bin/python scripts/litert_torch_convert.py --pflayer_dir /path/to/PfLayer \\
        --model resnet50_max --output runs/phone/resnet50_max_litert_torch_fp32.tflite

fp32, batch 1, NCHW input of 224x224 (the model as published, in eval mode). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

MODELS = ("resnet50", "resnet50_max", "resnet50_hybrid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pflayer_dir", required=True)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--output", required=True, help="The .tflite file to write.")
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.pflayer_dir, "resnet_pf.py")):
        parser.error(f"no resnet_pf.py in --pflayer_dir={args.pflayer_dir!r}")
    if args.image_size < 32:
        parser.error(f"--image_size must be >= 32. Received: {args.image_size}")
    import litert_torch
    import torch

    sys.path.insert(0, os.path.abspath(args.pflayer_dir))
    import resnet_pf  # the official code, from the checkout

    model = getattr(resnet_pf, args.model)().eval()
    edge = litert_torch.convert(model, (torch.randn(1, 3, args.image_size, args.image_size),))
    partial = f"{args.output}.partial"
    edge.export(partial)
    os.replace(partial, args.output)  # a finished file or none
    print(json.dumps({"model": args.model, "path": args.output, "torch": torch.__version__,
                      "litert_torch": getattr(litert_torch, "__version__", "?")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
