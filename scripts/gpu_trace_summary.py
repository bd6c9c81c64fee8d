"""Where a profiled training step spends its device time: a summary of a JAX profiler trace.

    KERAS_BACKEND=jax python scripts/gpu_throughput.py --models resnet50_max --trace_dir runs/trace ...
    python scripts/gpu_trace_summary.py runs/trace --steps 2

Reads the Chrome trace (``*.trace.json.gz``) that ``jax.profiler.trace`` writes next to its
TensorBoard profile, keeps the kernels of the device streams (processes named ``/device:...``)
and prints, per trace, the device time per step and the kernels grouped by class (matrix
kernels of convolutions and GEMMs, reduction fusions, elementwise loop fusions, memsets and
copies, other) and by XLA fusion name with its numeric suffix removed. Only reads: needs
neither JAX nor TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys

MATRIX = re.compile(r"cudnn|cutlass|xmma|nvjet|gemm|conv", re.I)
MAX_TRACE_BYTES = 256 << 20  # decompressed; a profile of a few training steps is a few MB


def kernel_class(name: str) -> str:
    """The class of one device kernel, from its name."""
    if name.startswith(("Memset", "Memcpy")):
        return "memset/copy"
    if name.startswith("input_reduce") or "reduce" in name.split("_fusion")[0]:
        return "reduction fusions"
    if name.startswith("loop_") or name.startswith("wrapped_") or "transpose_fusion" in name:
        return "elementwise fusions"
    if MATRIX.search(name):
        return "conv/GEMM kernels"
    return "other"


def device_kernels(path: str) -> list[dict]:
    """The complete ('X') events of the device processes of a Chrome trace (gzipped or plain JSON)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read(MAX_TRACE_BYTES + 1)
    if len(raw) > MAX_TRACE_BYTES:
        raise ValueError(f"{path}: more than {MAX_TRACE_BYTES} bytes of trace")
    events = json.loads(raw).get("traceEvents")
    if not isinstance(events, list):
        raise ValueError(f"{path}: no traceEvents list (not a Chrome trace)")
    devices = {e.get("pid") for e in events if isinstance(e, dict) and e.get("ph") == "M"
               and e.get("name") == "process_name" and isinstance(e.get("args"), dict)
               and "/device:" in str(e["args"].get("name", ""))}
    kernels = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and e.get("pid") in devices
               and isinstance(e.get("dur"), (int, float)) and isinstance(e.get("name"), str)]
    if not kernels:
        raise ValueError(f"{path}: no device kernels (a trace of a CPU-only run?)")
    return kernels


def summarize(path: str, steps: int, top: int) -> str:
    """The printable summary of one trace."""
    kernels = device_kernels(path)
    per_step = 1e-3 / steps  # microseconds over all steps -> ms per step
    total = sum(e["dur"] for e in kernels) * per_step
    classes, groups, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for e in kernels:
        classes[kernel_class(e["name"])] += e["dur"] * per_step
        group = re.sub(r"[_.]\d+$", "", e["name"])[:60]
        groups[group] += e["dur"] * per_step
        counts[group] += 1
    lines = [f"{path}: {total:.2f} ms of device kernels per step, {len(kernels) // steps} kernels per step",
             "  " + ", ".join(f"{name} {ms:.2f} ms ({100 * ms / total:.0f} %)" for name, ms in classes.most_common())]
    lines += [f"  {ms:8.2f} ms {counts[g] // steps:5d}x  {g}" for g, ms in groups.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="*.trace.json(.gz) files or folders to search for them.")
    parser.add_argument("--steps", type=int, default=2, help="Training steps in each trace.")
    parser.add_argument("--top", type=int, default=12, help="Fusion/kernel groups to list.")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 0:
        parser.error("--steps must be >= 1 and --top >= 0")
    files = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                            if f.endswith((".trace.json.gz", ".trace.json")))
        else:
            files.append(path)
    if not files:
        parser.error("no *.trace.json(.gz) file found")
    for path in files:
        try:
            print(summarize(path, args.steps, args.top))
        except (OSError, EOFError, ValueError, RecursionError) as error:  # JSONDecodeError, BadGzipFile too
            print(f"gpu_trace_summary: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
