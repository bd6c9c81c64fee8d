"""One spec per published model: the single table the builders, registry, profiler, tests and README read.

A :class:`ModelSpec` holds everything known about one published model: its family and
builder arguments (the full architecture), the paper's parameter and MAC counts and top-1 /
top-5, the official checkpoint(s), the state-dict manifest a download is checked against,
the eval transform and the license. Adding a model is one entry in :data:`SPECS`.

Sources: the paper (https://arxiv.org/abs/2202.02777) and the official README of
github.com/naver-ai/PfLayer @ 008a096 (Apache-2.0; checkpoints on Google Drive). Params are
trainable parameters; MACs are multiply-adds at 224x224 (the paper's "FLOPs"), counted by
:func:`pf_keras.profile`. ViT-S-max and PiT-S-max top-1 is the "+DeiT" column (the recipe
of the released files); the authors give no top-5 for them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pf_keras.imagenet import IMAGENET_MEAN, IMAGENET_STD

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
PAPER = "https://arxiv.org/abs/2202.02777"
REFERENCE = "https://github.com/naver-ai/PfLayer/tree/008a096"

# Family -> its generic builder ("module:function"), imported on first use.
FAMILY_BUILDERS = {
    "resnet": "pf_keras.models.resnet:ResNet",
    "vit": "pf_keras.models.vit:ViT",
    "pit": "pf_keras.models.pit:PiT",
}
SIZE_DEPENDENT_FAMILIES = ("vit",)  # weights that depend on the input size (ViT: one position embedding per patch)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Eval preprocessing of a checkpoint (timm's ``pretrained_cfg`` fields).

    Resize the shorter side to ``floor(size / crop_fraction)`` with ``interpolation``, centre
    crop ``size`` x ``size``, scale to [0, 1] and normalise with ``mean`` / ``std``.
    """

    size: int = 224
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop (256 for 224 / 0.875, as timm computes it)."""
        return int(self.size / self.crop_fraction)  # floor, as timm's math.floor


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One official weight file."""

    url: str  # the page the authors link (Google Drive)
    top1: float | None
    top5: float | None
    tag: str = "imagenet"  # the ``weights=`` value that selects it
    sha256: str | None = None  # recorded after a verified download; None = manifest check only
    note: str = ""

    @property
    def drive_id(self) -> str | None:
        """The Google Drive file id in ``url``, if it is a Drive link."""
        match = re.search(r"drive\.google\.com/(?:file/d/|uc\?id=)([-\w]+)", self.url)
        return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything known about one published model."""

    name: str
    family: str
    description: str
    builder_args: Mapping[str, Any]  # the full architecture: every argument that shapes the weights
    params: int
    macs_g: float
    top1: float | None
    top5: float | None
    checkpoints: tuple[Checkpoint, ...] = ()
    eval: EvalTransform = EvalTransform()
    license: str = "Apache-2.0"
    paper: str = PAPER
    reference: str = REFERENCE
    manifest: str = ""  # state-dict manifest JSON; relative paths are under pf_keras/data. "" = published/<name>.json

    @property
    def pretrained(self) -> bool:
        """True when the authors released a checkpoint."""
        return bool(self.checkpoints)

    def checkpoint(self, tag: str = "imagenet") -> Checkpoint:
        """The checkpoint selected by ``tag``; ValueError listing the available ones."""
        for checkpoint in self.checkpoints:
            if checkpoint.tag == tag:
                return checkpoint
        available = [c.tag for c in self.checkpoints]
        if not available:
            raise ValueError(
                f"The authors published no ImageNet checkpoint for {self.name!r} (pretrained models: "
                f"{list_specs(pretrained=True)}); train or convert your own and pass weights=PATH. "
                f"Received: weights={tag!r}"
            )
        raise ValueError(f"{self.name!r} has checkpoints {available}. Received: weights={tag!r}")

    @property
    def manifest_path(self) -> str:
        return os.path.join(DATA_DIR, self.manifest or os.path.join("published", f"{self.name}.json"))

    def builder(self) -> Callable:
        """The family's generic builder (``ResNet``, ``ViT`` or ``PiT``)."""
        return family_builder(self.family)


def family_builder(family: str) -> Callable:
    """The generic builder of ``family``; ValueError listing the known families."""
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"Unknown model family. Valid families: {sorted(FAMILY_BUILDERS)}. Received: {family!r}")
    module, function = FAMILY_BUILDERS[family].split(":")
    return getattr(importlib.import_module(module), function)


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


_RESNET = {"depths": (3, 4, 6, 3), "width_mult": 1.0}
_VIT = {"patch_size": 16, "depth": 12, "mlp_ratio": 4.0, "mixers": "alternating"}
_PIT = {"mlp_ratio": 4.0, "mixers": "alternating", "image_size": 224}
_BICUBIC = EvalTransform(interpolation="bicubic")  # DeiT-style training (timm's ViT/PiT defaults)
_LONGER = "trained for longer (the README's '+' rows)"

SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "resnet50", "resnet", "ResNet-50 v1.5 baseline",
            {**_RESNET, "block_kinds": "regular"}, 25_557_032, 4.11, 76.2, 93.8,
        ),
        ModelSpec(
            "resnet50_max", "resnet", "ResNet-50 with a 3x3 max-pool in all 16 bottlenecks",
            {**_RESNET, "block_kinds": "max"}, 14_232_232, 2.26, 74.3, 92.0,
            (
                Checkpoint(_drive("1MoCdVLPau4XuI0BVGEwDkiwibpybqWTX"), 74.3, 92.0),
                Checkpoint(_drive("1TQfwMXENn7s78Myc58svKVpHi5OVsdGX"), 75.5, 92.1, tag="imagenet_longer",
                           note=_LONGER),
            ),
        ),
        ModelSpec(
            "resnet50_hybrid", "resnet", "ResNet-50 with max-pool in 13 blocks; the 3 downsampling blocks keep a conv",
            {**_RESNET, "block_kinds": "efficient"}, 17_330_600, 2.61, 77.1, 93.1,
            (
                Checkpoint(_drive("1CyajEQUfWo9oetqcIhexVjfRXU-iGHk1"), 77.1, 93.1),
                Checkpoint(_drive("1f5fOwEItFITqzofvQ6d-kLLOTs-c1k3o"), 78.0, 93.5, tag="imagenet_longer",
                           note=_LONGER),
            ),
        ),
        ModelSpec(
            "vit_ti_max", "vit", "ViT-Ti with max-pool mixers in odd blocks",
            {**_VIT, "hidden_dim": 192, "num_heads": 3}, 6_159_400, 1.16, None, None, eval=_BICUBIC,
        ),
        ModelSpec(
            "vit_s_max", "vit", "ViT-S with max-pool mixers in odd blocks",
            {**_VIT, "hidden_dim": 384, "num_heads": 6}, 23_819_368, 4.58, 80.0, None,
            (Checkpoint(_drive("19lfagLJDXWvVHcb8Qm_U4_A_Kr7qYLv7"), 80.0, None, note="DeiT recipe"),),
            eval=_BICUBIC,
        ),
        ModelSpec(
            "vit_b_max", "vit", "ViT-B with max-pool mixers in odd blocks",
            {**_VIT, "hidden_dim": 768, "num_heads": 12}, 93_644_008, 18.17, None, None, eval=_BICUBIC,
        ),
        ModelSpec(
            "pit_ti_max", "pit", "PiT-Ti with max-pool mixers in odd blocks",
            {**_PIT, "patch_size": 16, "stride": 8, "head_dims": (32, 32, 32), "depths": (2, 6, 4),
             "num_heads": (2, 4, 8)},
            5_174_504, 0.53, None, None, eval=_BICUBIC,
        ),
        ModelSpec(
            "pit_s_max", "pit", "PiT-S with max-pool mixers in odd blocks",
            {**_PIT, "patch_size": 16, "stride": 8, "head_dims": (48, 48, 48), "depths": (2, 6, 4),
             "num_heads": (3, 6, 12)},
            25_119_784, 2.60, 80.8, None,
            (Checkpoint(_drive("1S9JJM2WGtDtpo-6Me7Ak74nJOlOeBKeH"), 80.8, None, note="DeiT recipe"),),
            eval=_BICUBIC,
        ),
        ModelSpec(
            "pit_b_max", "pit", "PiT-B with max-pool mixers in odd blocks",
            {**_PIT, "patch_size": 14, "stride": 7, "head_dims": (64, 64, 64), "depths": (3, 6, 4),
             "num_heads": (4, 8, 16)},
            79_005_928, 11.28, None, None, eval=_BICUBIC,
        ),
    ]
}


def list_specs(*, pretrained: bool | None = None) -> list[str]:
    """Sorted spec names; ``pretrained=True``/``False`` keeps those with / without a checkpoint."""
    return sorted(n for n, s in SPECS.items() if pretrained is None or s.pretrained == pretrained)


def get_spec(name: str) -> ModelSpec:
    """The spec of the published model ``name``; ValueError listing the valid names."""
    if name not in SPECS:
        raise ValueError(f"No published model of that name. Valid names: {list_specs()}. Received: name={name!r}")
    return SPECS[name]


def load_manifest(name_or_spec: str | ModelSpec) -> dict:
    """The state-dict manifest of a published model: ``{"state_dict": {key: shape}, "params_trainable": n, ...}``."""
    spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)
    return _read_json(spec.manifest_path)


@functools.lru_cache(maxsize=32)
def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def models_table() -> str:
    """The README's model table (Markdown), generated from :data:`SPECS`."""
    rows = [
        "| model | family | params (M) | GMACs | top-1 | top-5 | eval: size / crop / resize | checkpoints (top-1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in SPECS.values():
        links = ", ".join(f"[{c.tag}]({c.url}) ({_number(c.top1)})" for c in s.checkpoints) or "-"
        rows.append(
            f"| `{s.name}` | {s.family} | {s.params / 1e6:.2f} | {s.macs_g:.2f} | {_number(s.top1)} | "
            f"{_number(s.top5)} | {s.eval.size} / {s.eval.crop_fraction} / {s.eval.interpolation} | {links} |"
        )
    return "\n".join(rows)


__all__ = [
    "Checkpoint",
    "EvalTransform",
    "FAMILY_BUILDERS",
    "ModelSpec",
    "SPECS",
    "family_builder",
    "get_spec",
    "list_specs",
    "load_manifest",
    "models_table",
]
