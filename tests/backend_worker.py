"""Runs the PyTorch parity fixtures on the Keras backend of this process (used by ``backend_test.py``).

    KERAS_BACKEND=jax python tests/backend_worker.py OUT_FOLDER

Every model is built by name, loads the fixture's state dict through ``weights="*.pth"``
(reader and converter included), and runs under the backend's compiler (``jax.jit`` of
``stateless_call`` on JAX); the transformers also eagerly and as feature extractors, PiT
on unknown input sizes. Prints one JSON object: the backend, the largest deviation from the
reference per fixture and mode, and whether TensorFlow was imported.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import load_fixture, nchw_to_nhwc, state_dict_of  # noqa: E402
from torch_save_writer import save_state_dict  # noqa: E402

import pf_keras  # noqa: E402

RESNETS = ["resnet_conv_small", "resnet_max_small", "resnet_hybrid_small", "resnet_hybrid_odd"]


def build(fixture: str, meta: dict, **kwargs) -> keras.Model:
    kw = meta["torch_kwargs"]
    common = dict(classes=kw["num_classes"], classifier_activation=None, **kwargs)
    if fixture.startswith("resnet"):
        return pf_keras.create_model(
            meta["torch_builder"].split(".")[-1], depths=tuple(kw["layer_setting"]), width_mult=kw["width_mult"],
            input_shape=(*meta["input_shape_nchw"][2:], 3), **common,
        )
    if fixture.startswith("vit"):
        return pf_keras.create_model(
            "vit_s_max", patch_size=kw["patch_size"], hidden_dim=kw["embed_dim"], depth=kw["depth"],
            num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"], input_shape=(kw["img_size"], kw["img_size"], 3),
            **common,
        )
    common.setdefault("input_shape", (kw["image_size"], kw["image_size"], 3))
    return pf_keras.create_model(
        "pit_s_max", patch_size=kw["patch_size"], stride=kw["stride"], head_dims=tuple(kw["base_dims"]),
        depths=tuple(kw["depth"]), num_heads=tuple(kw["heads"]), mlp_ratio=kw["mlp_ratio"],
        image_size=kw["image_size"], **common,
    )


def compiled(model: keras.Model):
    """``x -> outputs`` through the backend's compiler (the whole graph traced at once)."""
    if keras.backend.backend() != "jax":
        return model.predict
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    run = jax.jit(lambda x: model.stateless_call(trainable, non_trainable, x, training=False)[0])
    return lambda x: run(x)


def numpy(outputs) -> list[np.ndarray]:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(o) for o in outputs]


def main(folder: str) -> None:
    errors = {}
    for fixture in [*RESNETS, "vit_max_small", "pit_max_small"]:
        meta, arrays = load_fixture(fixture)
        path = os.path.join(folder, f"{fixture}.pth")
        save_state_dict(path, state_dict_of(arrays))
        x, want = nchw_to_nhwc(arrays["x"]), arrays["logits"]
        # PiT on unknown sizes: its position embedding is resized (here: kept) inside the trace.
        model = build(fixture, meta, weights=path, **({"input_shape": (None, None, 3)} if "pit" in fixture else {}))
        errors[f"{fixture}/compiled"] = float(np.abs(numpy(compiled(model)(x))[0] - want).max())
        if fixture in ("vit_max_small", "pit_max_small"):  # eager too: the token mixers' Python-side logic
            errors[f"{fixture}/eager"] = float(np.abs(numpy(model(x))[0] - want).max())
            extractor = build(fixture, meta, weights=path, features_only=True, out_indices=(-1,))
            feature = numpy(compiled(extractor)(x))[0]
            if fixture == "vit_max_small":
                reference = arrays[f"act/blocks.{meta['torch_kwargs']['depth'] - 1}"].reshape(feature.shape)
            else:
                reference = nchw_to_nhwc(arrays[f"act/transformers.{len(meta['torch_kwargs']['depth']) - 1}"])
            errors[f"{fixture}/features"] = float(np.abs(feature - reference).max())
    print(json.dumps({"backend": keras.backend.backend(), "errors": errors,
                      "tensorflow_imported": "tensorflow" in sys.modules}))


if __name__ == "__main__":
    main(sys.argv[1])
