"""The PyTorch route to the phone: the official PfLayer models converted to LiteRT with litert-torch.

Not imported by pf_keras_export: :mod:`pf_keras_export.litert_torch` runs this file as a
program under another Python, one with torch and ``litert-torch`` (this project's environment
has neither, and this file imports neither pf_keras nor TensorFlow). It imports the official
code from a PfLayer checkout (github.com/naver-ai/PfLayer), never copied into this repository::

    /path/to/litert-venv/bin/python export/litert_torch_convert.py check --pflayer_dir /path/to/PfLayer
    /path/to/litert-venv/bin/python export/litert_torch_convert.py convert --pflayer_dir /path/to/PfLayer \\
        --model resnet50_max --precision int8 --calibration calib.npy --output resnet50_max.tflite

``check`` prints one JSON line: the torch and litert-torch versions and, per official model,
"ok" or why it cannot be imported. ``convert`` writes one ``.tflite`` (batch 1, NCHW float
input, eval mode, random weights: latency does not depend on their values) and prints one
JSON line describing it. Failures: exit 1, the reason on the last stderr line.

Precisions:

- ``fp32``: ``litert_torch.convert(model, sample)``.
- ``int8``: PT2E static post-training quantization with litert-torch's own quantizer
  (``PT2EQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``: int8
  weights per output channel, symmetric; int8 activations per tensor, affine, ranges from a
  histogram observer over the ``--calibration`` images), then ``litert_torch.convert(...,
  quant_config=QuantConfig(pt2e_quantizer=...))``. Input and output stay float32 (a QUANTIZE
  op after the input, a DEQUANTIZE before the output); ops the quantizer does not annotate
  stay float between DEQUANTIZE/QUANTIZE pairs.
- ``dynamic``: PT2E dynamic-range quantization with the same quantizer
  (``get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)``): int8 weights
  per output channel, activations quantized per inference by the kernels; no calibration (the
  counterpart of the port's ``dynamic`` format).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

# Official model name -> module of the PfLayer checkout that defines it (same names as pf_keras).
OFFICIAL = {
    "resnet50": "resnet_pf",
    "resnet50_max": "resnet_pf",
    "resnet50_hybrid": "resnet_pf",
    "vit_ti_max": "vit_pf",
    "vit_s_max": "vit_pf",
    "vit_b_max": "vit_pf",
    "pit_ti_max": "pit_pf",
    "pit_s_max": "pit_pf",
    "pit_b_max": "pit_pf",
}
PRECISIONS = ("fp32", "int8", "dynamic")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


def _official_module(pflayer_dir: str, name: str):
    if os.path.abspath(pflayer_dir) not in sys.path:
        sys.path.insert(0, os.path.abspath(pflayer_dir))
    return importlib.import_module(OFFICIAL[name])


def _versions() -> dict:
    import litert_torch
    import torch

    return {"torch": torch.__version__, "litert_torch": getattr(litert_torch, "__version__", "?")}


def check(pflayer_dir: str) -> dict:
    """Versions, and per official model "ok" or the reason it cannot be built."""
    models = {}
    for name in OFFICIAL:
        try:
            getattr(_official_module(pflayer_dir, name), name)
            models[name] = "ok"
        except Exception as error:  # noqa: BLE001 - reported per model, the others still work
            models[name] = _reason(error)
    return {**_versions(), "models": models}


def _calibration_inputs(sample, calibration_file: str) -> list:
    """The images in ``calibration_file`` as NCHW float tensors shaped like ``sample``."""
    import numpy as np
    import torch

    images = np.load(calibration_file, allow_pickle=False)  # (n, H, W, 3) float32, normalised
    if images.ndim != 4 or images.shape[1:] != (sample.shape[2], sample.shape[3], 3):
        raise ValueError(f"calibration images must be (n, {sample.shape[2]}, {sample.shape[3]}, 3); "
                         f"got {images.shape}")
    return [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32))
            for image in images]


def _pt2e(model, sample, inputs: list, *, dynamic: bool):
    """PT2E quantization with per-channel symmetric int8 weights, run over ``inputs`` before conversion.

    ``dynamic=False``: static int8 activations whose ranges the observers take from ``inputs``
    (the calibration images). ``dynamic=True``: activations quantized per inference (one pass
    over ``inputs`` only initialises the graph).
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    )
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, (sample,)).module(), quantizer)
    with torch.no_grad():
        for x in inputs:
            prepared(x)
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    return quantized, {"quant_config": QuantConfig(pt2e_quantizer=quantizer)}


def convert(pflayer_dir: str, name: str, *, precision: str, image_size: int, output: str,
            calibration: str | None = None) -> dict:
    """Converts the official ``name`` and writes ``output``; returns what it wrote."""
    import litert_torch
    import torch

    torch.manual_seed(0)
    model = getattr(_official_module(pflayer_dir, name), name)().eval()
    sample = torch.randn(1, 3, image_size, image_size)
    options = {}
    if precision == "int8":
        if not calibration:
            raise ValueError("int8 needs --calibration")
        model, options = _pt2e(model, sample, _calibration_inputs(sample, calibration), dynamic=False)
    elif precision == "dynamic":
        model, options = _pt2e(model, sample, [sample], dynamic=True)
    edge = litert_torch.convert(model, (sample,), **options)
    edge.export(output)
    return {"model": name, "precision": precision, "image_size": image_size, "output": output, **_versions()}


def main(argv: list[str] | None = None) -> int:
    """The program: ``check`` or ``convert``; exit 1 with the reason on stderr when it fails."""
    # Run as a file, Python puts this folder first on sys.path, where pf_keras_export's modules
    # (litert.py, images.py, ...) would shadow installed packages of the same names.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="Versions and the official models the checkout defines.")
    check_parser.add_argument("--pflayer_dir", required=True)
    convert_parser = commands.add_parser("convert", help="Convert one official model to a .tflite file.")
    convert_parser.add_argument("--pflayer_dir", required=True)
    convert_parser.add_argument("--model", required=True, choices=tuple(OFFICIAL))
    convert_parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    convert_parser.add_argument("--image_size", type=int, default=224)
    convert_parser.add_argument("--calibration", default=None, help="int8: .npy of (n, H, W, 3) normalised images.")
    convert_parser.add_argument("--output", required=True, help="The .tflite file to write.")
    flags = parser.parse_args(argv)
    try:
        if flags.command == "check":
            result = check(flags.pflayer_dir)
        else:
            result = convert(flags.pflayer_dir, flags.model, precision=flags.precision, image_size=flags.image_size,
                             output=flags.output, calibration=flags.calibration)
    except Exception as error:  # noqa: BLE001 - the caller reads the last stderr line
        print(f"litert_torch_convert: {_reason(error)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
