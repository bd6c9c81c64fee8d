"""Training (or inference) images/s of the official PyTorch ResNets (a PfLayer checkout), side by side.

Runs under a Python that has torch (not this project's environment; nothing here imports
TensorFlow or Keras) and prints one JSON line. The official code is imported from the
checkout given on the command line, never copied into this repository:

    /path/to/torch-venv/bin/python training/torch_throughput.py --pflayer_dir /path/to/PfLayer \\
        --model resnet50_max --image_size 224 --batch_size 16 --steps 5 --warmup_steps 2

The step is what a careful PyTorch user runs on CPU: channels_last model and inputs, fp32,
``CrossEntropyLoss``, ``SGD(momentum=0.9, nesterov=True, weight_decay=1e-4)`` (the port's
``resnet90`` recipe), ``zero_grad(set_to_none=True)``, synthetic data held in memory, all cores.
On a GPU (``--device cuda``) the same step runs on device-resident data with
``cudnn.benchmark`` and, with ``--dtype bfloat16``, under ``torch.autocast`` (what a PyTorch
user runs for mixed precision); ``--mode infer`` times ``model.eval()`` forward passes under
``torch.inference_mode()`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODELS = ("resnet50", "resnet50_max", "resnet50_hybrid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pflayer_dir", required=True, help="Checkout of github.com/naver-ai/PfLayer.")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores).")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: torch.autocast mixed precision (weights stay float32).")
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch_size, args.steps) < 1 or args.warmup_steps < 0:
        parser.error("sizes and step counts must be positive")
    source = os.path.join(args.pflayer_dir, "resnet_pf.py")
    if not os.path.isfile(source):
        parser.error(f"no resnet_pf.py in --pflayer_dir={args.pflayer_dir!r}")
    import torch

    sys.path.insert(0, os.path.abspath(args.pflayer_dir))
    import resnet_pf  # the official code, from the checkout

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    model = getattr(resnet_pf, args.model)().to(device=device, memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    if args.mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        criterion = torch.nn.CrossEntropyLoss()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            return loss.detach()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                return model(images)[:, 0].float().sum()

    for _ in range(args.warmup_steps):
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    last.item()  # waits for the last step
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    key = "train_images_per_sec" if args.mode == "train" else "infer_images_per_sec"
    print(json.dumps({"model": args.model, key: args.steps * args.batch_size / seconds, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
                      "batch_size": args.batch_size, "image_size": args.image_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
