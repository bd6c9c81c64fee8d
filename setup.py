"""Packaging for pf_keras and its two front ends.

``export/`` and ``training/`` are installed as the packages ``pf_keras_export`` and
``pf_keras_training`` (not under generic top-level names such as ``export`` or ``training``),
with console scripts; ``python training/train.py ...`` keeps working in the repository.
"""

from setuptools import find_packages, setup

setup(
    name="pf-keras",
    version="0.1.0",
    description='Keras 3 port of "Learning Features with Parameter-Free Layers" (ICLR 2022)',
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",  # keras>=3.13 itself requires Python>=3.11
    packages=[*find_packages(include=["pf_keras", "pf_keras.*"]), "pf_keras_export", "pf_keras_training"],
    package_dir={"pf_keras_export": "export", "pf_keras_training": "training"},
    install_requires=[
        "tensorflow>=2.19,<2.22",
        "keras>=3.13",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        "numpy",
        "gdown>=6.5,<7",  # weights="imagenet": Drive downloads (confirmation page, timeouts, incomplete transfers)
    ],
    package_data={"pf_keras": ["data/*.json", "data/published/*.json"]},  # class names, checkpoint manifests
    extras_require={
        "torch": ["torch>=2.0"],  # only to re-create the torch.save test fixtures; reading .pth needs no torch
        "litert": ["ai-edge-litert>=2.0"],
        # What the training/ and export/ front ends need beyond the library.
        "tools": ["ai-edge-litert>=2.0", "matplotlib>=3.7", "pillow>=10"],
        # jax: the backend-neutrality test runs the parity fixtures on Keras/JAX (CPU wheel).
        # pytest-xdist: `make test` runs the suite on one worker per core.
        "dev": ["pytest>=8", "pytest-xdist>=3.2", "ruff>=0.6", "ai-edge-litert>=2.0", "matplotlib>=3.7", "pillow>=10",
                "jax>=0.4.30"],
    },
    entry_points={
        "console_scripts": [
            "pf-keras-convert=pf_keras_training.commands:convert",
            "pf-keras-profile=pf_keras_training.commands:profile",
            "pf-keras-export=pf_keras_export.export:main",
            "pf-keras-validate=pf_keras_export.validate:main",
            "pf-keras-benchmark=pf_keras_export.benchmark:main",
            "pf-keras-android=pf_keras_export.android:main",
            "pf-keras-train=pf_keras_training.commands:train",
            "pf-keras-evaluate=pf_keras_training.commands:evaluate",
            "pf-keras-train-benchmark=pf_keras_training.commands:train_benchmark",
            "pf-keras-study=pf_keras_training.commands:study",
            "pf-keras-gradcam=pf_keras_training.commands:gradcam",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
