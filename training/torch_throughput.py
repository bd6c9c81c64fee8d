"""Training images/s of the official PyTorch ResNets (a PfLayer checkout), for the side-by-side benchmark.

Runs under a Python that has torch (not this project's environment; nothing here imports
TensorFlow or Keras) and prints one JSON line. The official code is imported from the
checkout given on the command line, never copied into this repository:

    /path/to/torch-venv/bin/python training/torch_throughput.py --pflayer_dir /path/to/PfLayer \\
        --model resnet50_max --image_size 224 --batch_size 16 --steps 5 --warmup_steps 2

The step is what a careful PyTorch user runs on CPU: channels_last model and inputs, fp32,
``CrossEntropyLoss``, ``SGD(momentum=0.9, nesterov=True, weight_decay=1e-4)`` (the port's
``resnet90`` recipe), ``zero_grad(set_to_none=True)``, synthetic data held in memory, all cores.
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
    model = getattr(resnet_pf, args.model)().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(args.warmup_steps):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()  # waits for the step
    seconds = time.perf_counter() - start
    print(json.dumps({"model": args.model, "train_images_per_sec": args.steps * args.batch_size / seconds,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
