"""Grad-CAM class-activation heatmaps for the port's CNNs and transformers, and a command for images.

Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391): the feature map
``A`` of a layer is weighted per channel by the spatial mean of d(score)/dA, summed over
channels, passed through a ReLU, upsampled bilinearly to the input size and scaled to [0, 1]
per image. The score is the class logit: when the model ends in a softmax Dense layer, the
logit is recomputed from that layer's input and weights.

Layer (``layer=None``): the last layer with a (batch, h, w, C) output, i.e. the last spatial
stage: ``stage4_block{n}_out`` in the port's ResNets, ``conv5_block3_out`` in
keras.applications ResNet50, ``feature_map`` (the final LayerNorm-ed tokens of the last block
on the (H/16, W/16) patch grid) in ViT-max and ``norm`` in PiT-max. A layer with token output
(batch, tokens, C), such as ViT's ``block11``, is reshaped to its grid (row-major tokens; the
grid's aspect follows the input's).

Needs the TensorFlow backend (gradients through ``tf.GradientTape``).

Command (one PNG overlay per image, the top class or ``--class_index``):

    pf-keras-gradcam --model resnet50_hybrid --weights imagenet --output_dir cams a.jpg b.jpg
    pf-keras-gradcam --model runs/demo --output_dir cams circle.jpg   # a pf-keras-train run (its final/)
    pf-keras-gradcam --model my_model.keras --output_dir cams shape.jpg

Images are resized to the model's input size and normalised with the ImageNet mean and std
(as ``pf_keras.preprocess_input``; ``--raw_input`` feeds [0, 255] instead). An image declaring
more than :data:`MAX_IMAGE_PIXELS` pixels (40 MP, the training pipeline's limit) is refused from
its header, before decoding. Each image gets ``<stem>_gradcam.png``; images with the same stem
(``a/x.png``, ``b/x.png``) get ``x_gradcam.png``, ``x_2_gradcam.png``, ... in the order given
(the printed lines say which is which).
"""

from __future__ import annotations

import io
import math
import os
import sys
import warnings
from collections.abc import Sequence

import keras
import numpy as np

from pf_keras import fileio, safe_open
from pf_keras.cli import ArgumentParser, run_cli
from pf_keras.preprocessing import MAX_JPEG_SCANS

MAX_IMAGE_PIXELS = 40_000_000  # as the training pipeline: above any ImageNet image (the largest is ~26 MP)


def feature_layer(model: keras.Model, layer: str | None = None) -> keras.layers.Layer:
    """The layer whose output Grad-CAM weighs: ``layer`` by name, else the last spatial map.

    Raises:
        ValueError: for an unknown name, a layer whose output is not (batch, h, w, C) or
            (batch, tokens, C), or a model with no spatial map.
    """
    if layer is not None:
        names = {item.name: item for item in model.layers}
        if layer not in names:
            raise ValueError(f"Grad-CAM layer not found in model {model.name!r}. Received: layer={layer!r}")
        found = names[layer]
        if len(found.output.shape) not in (3, 4):
            raise ValueError(
                f"The Grad-CAM layer needs a (batch, h, w, C) or (batch, tokens, C) output. "
                f"Received: layer={layer!r} with output shape {tuple(found.output.shape)}"
            )
        return found
    for candidate in reversed(model.layers):
        if isinstance(candidate, keras.layers.InputLayer) or isinstance(candidate.output, list | tuple):
            continue
        shape = candidate.output.shape
        if len(shape) == 4 and candidate.name != "preprocessing":
            return candidate
    raise ValueError(f"Grad-CAM found no layer with a (batch, h, w, C) output. Received: model {model.name!r}")


def _token_grid(tokens: int, input_hw: tuple) -> tuple[int, int]:
    h_in, w_in = (s or 1 for s in input_hw)
    h = max(1, round(math.sqrt(tokens * h_in / w_in)))
    if tokens % h:
        raise ValueError(f"Cannot lay {tokens} tokens on a grid with the input's aspect. Received: input {input_hw}")
    return h, tokens // h


def _score_model(model: keras.Model, layer: keras.layers.Layer) -> tuple[keras.Model, keras.layers.Layer | None]:
    """A model returning (feature map, scores input); the Dense to apply when it ended in a softmax."""
    if len(model.outputs) != 1 or len(model.output.shape) != 2:
        raise ValueError(
            f"Grad-CAM needs a classifier with one (batch, classes) output. Received: outputs "
            f"{[tuple(o.shape) for o in model.outputs]}"
        )
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.get_config()["activation"] == "softmax":
        return keras.Model(model.inputs, [layer.output, last.input]), last
    return keras.Model(model.inputs, [layer.output, model.output]), None


def grad_cam(
    model: keras.Model, images, *, class_index=None, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps of a batch.

    Args:
        model: keras.Model. A classifier with one (batch, classes) output (logits or softmax).
        images: array (batch, H, W, C), already preprocessed as the model expects.
        class_index: None (each image's top class), an int, or one int per image.
        layer: str or None. Layer to explain. Defaults to the last spatial map (module docstring).

    Returns:
        ``(heatmaps, classes)``: float32 (batch, H, W) in [0, 1] (all zeros where no pixel
        supports the class) and the int class index explained for each image.

    Raises:
        ValueError: for a bad layer, a non-classifier model or class indices out of range.

    Example:
        >>> import pf_keras
        >>> model = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=4)
        >>> heat, cls = grad_cam(model, np.zeros((2, 64, 64, 3), "float32"), class_index=1)
        >>> heat.shape, cls.tolist()
        ((2, 64, 64), [1, 1])
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be a (batch, H, W, C) array. Received: shape={images.shape}")
    target = feature_layer(model, layer)
    scorer, dense = _score_model(model, target)
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        features, scores = scorer(x, training=False)
        tape.watch(features)
        if dense is not None:
            scores = tf.matmul(scores, dense.kernel) + (dense.bias if dense.use_bias else 0.0)
        scores = tf.cast(scores, tf.float32)
        num_classes = int(scores.shape[-1])
        if class_index is None:
            classes = tf.argmax(scores, axis=-1, output_type=tf.int32).numpy()
        else:
            classes = np.broadcast_to(np.asarray(class_index, np.int32), (len(images),)).copy()
        if classes.min() < 0 or classes.max() >= num_classes:
            raise ValueError(f"`class_index` must be in [0, {num_classes}). Received: class_index={class_index!r}")
        chosen = tf.gather(scores, classes, axis=1, batch_dims=1)
    grads = tape.gradient(chosen, features)
    features, grads = tf.cast(features, tf.float32), tf.cast(grads, tf.float32)
    if features.shape.rank == 3:  # tokens -> (batch, h, w, C)
        h, w = _token_grid(int(features.shape[1]), images.shape[1:3])
        features = tf.reshape(features, (-1, h, w, features.shape[-1]))
        grads = tf.reshape(grads, (-1, h, w, grads.shape[-1]))
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    return cam.astype(np.float32), classes


def heatmap_box(heatmap: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` (inclusive) of the pixels at or above ``threshold``; None if none."""
    ys, xs = np.nonzero(heatmap >= threshold)
    if ys.size == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def box_iou(a, b) -> float:
    """IoU of two inclusive pixel boxes ``(y0, x0, y1, x1)``; 0 when either is None."""
    if a is None or b is None:
        return 0.0
    h = min(a[2], b[2]) - max(a[0], b[0]) + 1
    w = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(h, 0) * max(w, 0)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _colormap(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, matplotlib's "jet" when available."""
    try:
        from matplotlib import colormaps

        return (colormaps["jet"](heatmap)[..., :3] * 255).astype(np.uint8)
    except ImportError:  # blue -> red ramp
        return np.stack([heatmap * 255, np.zeros_like(heatmap), (1 - heatmap) * 255], -1).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The heatmap blended over an RGB uint8 image (resized to the image when sizes differ)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay needs an (H, W, 3) RGB image. Received: shape={image.shape}")
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[1::-1], Image.BILINEAR))
    blended = (1 - alpha) * image.astype(np.float32) + alpha * _colormap(heat).astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def write_overlay(path: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> str:
    """Writes :func:`overlay` as a PNG, atomically. Returns ``path``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay(image, heatmap, alpha=alpha)).save(buffer, format="PNG")
    fileio.write_bytes(path, buffer.getvalue())
    return str(path)


def _jpeg_scans_over_limit(f) -> bool:
    """Whether the rest of the JPEG file ``f`` holds more than ``MAX_JPEG_SCANS`` start-of-scan markers (read
    in 1 MiB blocks, stopping there)."""
    count, last = 0, b""
    while count <= MAX_JPEG_SCANS:
        block = f.read(1 << 20)
        if not block:
            return False
        count += (last + block).count(b"\xff\xda")  # one byte carried over: a marker across blocks counts once
        last = block[-1:]
    return True


def read_image(path: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image file as RGB uint8, as stored and resized to ``size`` (h, w).

    Raises:
        ValueError: one line for a file that is not a readable image, not a regular file (a FIFO, a
            device), declares more than :data:`MAX_IMAGE_PIXELS` pixels, or is a JPEG of more than
            ``MAX_JPEG_SCANS`` scans (checked before decoding).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings(), os.fdopen(safe_open.open_fd(path), "rb") as f:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is lower
            if f.read(2) == b"\xff\xd8" and _jpeg_scans_over_limit(f):
                raise ValueError(f"a JPEG of more than {MAX_JPEG_SCANS} scans (its decoding time grows with scans "
                                 f"x pixels)")
            f.seek(0)
            with Image.open(f) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{width}x{height} is {width * height:,} pixels, over the limit of "
                                     f"{MAX_IMAGE_PIXELS:,}")
                rgb = img.convert("RGB")
                return np.asarray(rgb), np.asarray(rgb.resize((size[1], size[0]), Image.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot read the image {path!r}: {' '.join(str(error).split())}") from None


def output_names(images: Sequence[str]) -> list[str]:
    """``<stem>_gradcam.png`` per image, ``_2``, ``_3``, ... added to a stem already taken.

    Example:
        >>> output_names(["a/x.png", "b/x.jpg", "x_2.png"])
        ['x_gradcam.png', 'x_2_gradcam.png', 'x_2_2_gradcam.png']
    """
    stems: list[str] = []
    for path in images:
        stem = base = os.path.splitext(os.path.basename(path))[0]
        count = 1
        while stem in stems:
            count += 1
            stem = f"{base}_{count}"
        stems.append(stem)
    return [f"{stem}_gradcam.png" for stem in stems]


def _load_run(folder: str, weights: str | None) -> tuple[keras.Model, list[str]]:
    """The model of a preset folder or a ``pf-keras-train`` run folder (its ``final/``), and its class names.

    ``weights`` (e.g. the run's ``final_ema.weights.h5``) replaces the folder's own weights.
    """
    from pf_keras.weights.preset import model_folder, read_preset

    preset = read_preset(model_folder(folder))  # one line for an unfinished, older or damaged run
    try:
        model = preset.record.build(weights=weights or preset.weights_path)
    except Exception as error:  # noqa: BLE001 (a truncated or mismatched weights file: one line)
        path = weights or preset.weights_path
        raise ValueError(f"Cannot load the weights {path!r}: {' '.join(str(error).split())[:300]}") from None
    names = preset.metadata.get("class_names")
    return model, [str(c) for c in names] if isinstance(names, list) else []


MAX_KERAS_CONFIG = 64 << 20  # bytes of a .keras file's config.json (a ViT-B's is ~0.2 MB)
MAX_KERAS_ARCHIVE = 8 << 30  # bytes of all members of a .keras file, uncompressed (a ViT-B's are ~0.4 GB)


def _check_keras_archive(path: str) -> None:
    """ValueError unless ``path`` is a zip whose declared member sizes are within the limits above (checked
    before Keras inflates anything: ``zipfile`` never reads past a member's declared size)."""
    import zipfile  # noqa: PLC0415

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"Cannot load the model file {path!r}: not a .keras (zip) archive ({error})") from None
    config = sum(m.file_size for m in members if m.filename == "config.json")
    total = sum(m.file_size for m in members)
    if config > MAX_KERAS_CONFIG or total > MAX_KERAS_ARCHIVE:
        raise ValueError(f"Cannot load the model file {path!r}: it declares {total:,} bytes uncompressed "
                         f"(config.json {config:,}), above the limits of {MAX_KERAS_ARCHIVE:,} "
                         f"({MAX_KERAS_CONFIG:,})")


def _load_model(spec: str, weights: str | None) -> tuple[keras.Model, list[str]]:
    if os.path.isdir(spec):
        return _load_run(spec, weights)
    if spec.endswith(".keras"):
        if not os.path.isfile(spec):
            raise ValueError(f"The model file does not exist. Received: --model={spec!r}")
        _check_keras_archive(spec)
        try:
            return keras.models.load_model(spec), []
        except Exception as error:  # hostile or truncated file: one line
            raise ValueError(f"Cannot load the model file {spec!r}: {' '.join(str(error).split())[:300]}") from None
    from pf_keras.models.registry import create_model

    return create_model(spec, weights=weights), []


def main(argv: list[str]) -> int:
    """Writes ``<output_dir>/<image stem>_gradcam.png`` (the heatmap over the image at its own size) per image
    (:func:`output_names`: a stem given twice gets ``_2``, ...)."""
    parser = ArgumentParser(prog="pf-keras-gradcam", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads, at most 40 MP); a file "
                        "name given twice (a/x.png, b/x.png) writes x_gradcam.png, x_2_gradcam.png")
    parser.add_argument("--model", required=True,
                        help="registry name (with --weights), a .keras file, a preset folder or a pf-keras-train "
                        "run folder (its final/)")
    parser.add_argument("--weights", default=None, help="registry models: imagenet, a .pth or .weights.h5 file; "
                        "folders: other weights for the same model (e.g. a run's final_ema.weights.h5)")
    parser.add_argument("--output_dir", "--out_dir", dest="out_dir", metavar="OUTPUT_DIR", required=True,
                        help="folder of the heatmaps (--out_dir: deprecated alias)")
    parser.add_argument("--image_size", type=int, default=0, help="input side; default: the model's")
    parser.add_argument("--class_index", type=int, default=None, help="default: each image's top class")
    parser.add_argument("--layer", default=None, help="layer to explain; default: the last spatial map")
    parser.add_argument("--raw_input", action="store_true",
                        help="feed RGB in [0, 255] (models with include_preprocessing=True)")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    for path in args.images:
        if not os.path.isfile(path):
            kind = "is not a regular file" if os.path.exists(path) else "does not exist"
            raise ValueError(f"The image file {kind}. Received: {path!r}")
    model, class_names = _load_model(args.model, args.weights)
    side = args.image_size or model.input_shape[1]
    if not side or side < 1:
        raise ValueError(f"The model's input size is unknown: pass --image_size. Received: --image_size={side}")
    size = (side, args.image_size or model.input_shape[2] or side)
    os.makedirs(args.out_dir, exist_ok=True)
    from pf_keras.imagenet import preprocess_input

    for path, name in zip(args.images, output_names(args.images), strict=True):
        original, image = read_image(path, size)
        batch = image[None].astype(np.float32)
        heat, classes = grad_cam(model, batch if args.raw_input else preprocess_input(batch),
                                 class_index=args.class_index, layer=args.layer)
        out = write_overlay(os.path.join(args.out_dir, name), original, heat[0])
        label = int(classes[0])
        named = f" ({class_names[label]})" if label < len(class_names) else ""
        print(f"{path}: class {label}{named} -> {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Entry point of ``pf-keras-gradcam``: :func:`main` under the one error policy (pf_keras.cli.run_cli)."""
    return run_cli(main, argv, prog="pf-keras-gradcam")


if __name__ == "__main__":
    sys.exit(cli())
