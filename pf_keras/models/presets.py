"""Published models: numbers from the paper / official README, checkpoints, eval preprocessing.

Params are trainable parameters; MACs are multiply-adds at 224x224 (the paper's "FLOPs").
Top-1/top-5 are ImageNet-1k validation accuracies reported by the authors (official
README, naver-ai/PfLayer @ 008a096). ``checkpoint_url`` is the official file (Google Drive:
it needs a browser confirmation, so pf_keras never downloads it itself; see
:func:`pf_keras.weights.loading.weights_dir`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """Metadata of one published model."""

    name: str
    description: str
    params: int
    macs_g: float
    top1: float | None
    top5: float | None
    interpolation: str  # eval resize: "bilinear" (ResNets) or "bicubic" (DeiT-style ViT/PiT)
    checkpoint_url: str | None = None
    image_size: int = 224
    crop_fraction: float = 0.875
    paper: str = "https://arxiv.org/abs/2202.02777"


_DRIVE = "https://drive.google.com/file/d/{}/view"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("resnet50", "ResNet-50 v1.5 baseline", 25_557_032, 4.11, 76.2, 93.8, "bilinear"),
        Preset(
            "resnet50_max",
            "ResNet-50 with a 3x3 max-pool in all 16 bottlenecks",
            14_232_232,
            2.26,
            74.3,
            92.0,
            "bilinear",
            _DRIVE.format("1MoCdVLPau4XuI0BVGEwDkiwibpybqWTX"),
        ),
        Preset(
            "resnet50_hybrid",
            "ResNet-50 with max-pool in 13 blocks; the 3 downsampling blocks keep a conv",
            17_330_600,
            2.61,
            77.1,
            93.1,
            "bilinear",
            _DRIVE.format("1CyajEQUfWo9oetqcIhexVjfRXU-iGHk1"),
        ),
        Preset("vit_ti_max", "ViT-Ti with max-pool mixers in odd blocks", 6_159_400, 1.16, None, None, "bicubic"),
        Preset(
            "vit_s_max",
            "ViT-S with max-pool mixers in odd blocks",
            23_819_368,
            4.58,
            80.0,
            None,
            "bicubic",
            _DRIVE.format("19lfagLJDXWvVHcb8Qm_U4_A_Kr7qYLv7"),
        ),
        Preset("vit_b_max", "ViT-B with max-pool mixers in odd blocks", 93_644_008, 18.17, None, None, "bicubic"),
        Preset("pit_ti_max", "PiT-Ti with max-pool mixers in odd blocks", 5_174_504, 0.53, None, None, "bicubic"),
        Preset(
            "pit_s_max",
            "PiT-S with max-pool mixers in odd blocks",
            25_119_784,
            2.60,
            80.8,
            None,
            "bicubic",
            _DRIVE.format("1S9JJM2WGtDtpo-6Me7Ak74nJOlOeBKeH"),
        ),
        Preset("pit_b_max", "PiT-B with max-pool mixers in odd blocks", 79_005_928, 11.28, None, None, "bicubic"),
    ]
}
