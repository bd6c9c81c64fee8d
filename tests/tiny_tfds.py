"""Real (tiny) TFDS datasets built locally for tests: one builder class per dataset name."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath


def builder(class_name: str, *, num_classes: int, encoding: str, sizes: dict[str, int],
            image: Callable[[int, int], np.ndarray]) -> type:
    """A ``GeneratorBasedBuilder`` named ``class_name`` (TFDS's dataset name is its snake case).

    Args:
        num_classes: int. Example ``i`` has label ``i % num_classes``.
        encoding: str. "png" or "jpeg".
        sizes: dict. Examples per split, e.g. ``{"train": 4, "validation": 3}``.
        image: callable. ``image(split_index, i)`` -> uint8 HxWx3 (split index in ``sizes`` order).
    """

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=encoding),
            "label": tfds.features.ClassLabel(num_classes=num_classes)}))

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(k, n) for k, (name, n) in enumerate(sizes.items())}

    def _generate_examples(self, split, n):
        for i in range(n):
            yield i, {"image": image(split, i), "label": i % num_classes}

    return type(class_name, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"),
        "code_path": epath.Path(__file__),  # TFDS's default lookup fails for modules pytest imports by path
        "_info": _info, "_split_generators": _split_generators, "_generate_examples": _generate_examples,
        "__module__": __name__,
    })
