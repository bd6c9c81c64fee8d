"""Tests of pf_keras/gradcam.py: heatmaps land on the drawn shape; transformers; overlays; the command."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from conftest import randomised
from PIL import Image

import pf_keras
from pf_keras.cli import run_cli
from pf_keras.gradcam import box_iou, feature_layer, grad_cam, heatmap_box, main, write_overlay
from pf_keras_training import builtin_data


def _builtin(split: str, per_class: int):
    images, labels, boxes = [], [], []
    for label in range(len(builtin_data.CLASSES)):
        for index in range(per_class):
            image, box = builtin_data.example(label, split=split, index=index)
            images.append(image)
            labels.append(label)
            boxes.append(box)
    return np.stack(images).astype("float32") / 127.5 - 1.0, np.array(labels), boxes


def _tiny_cnn() -> keras.Model:
    inputs = keras.Input((builtin_data.IMAGE_SIZE, builtin_data.IMAGE_SIZE, 3))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(x)  # 10x10 map
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(builtin_data.CLASSES), name="predictions")(x))


class TestLocalisation:
    def test_heatmaps_land_on_the_drawn_shape(self):
        # ~13 CPU-s: 3000 builtin images, 6 epochs of a 5-conv CNN (98.4 % val top-1, mean IoU 0.59 here).
        keras.utils.set_random_seed(0)
        x_train, y_train, _ = _builtin("train", 300)
        x_val, y_val, boxes = _builtin("val", 50)
        model = _tiny_cnn()
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=64, epochs=6, verbose=0)
        assert model.evaluate(x_val, y_val, verbose=0)[1] >= 0.9
        shapes = [i for i, box in enumerate(boxes) if box is not None]  # the 6 localisable classes
        assert len(shapes) == 6 * 50
        heat, classes = grad_cam(model, x_val[shapes], class_index=y_val[shapes])
        assert feature_layer(model).name == "features" and (classes == y_val[shapes]).all()
        ious = [box_iou(heatmap_box(h, 0.5), boxes[i]) for h, i in zip(heat, shapes, strict=True)]
        assert np.mean(ious) >= 0.5, np.mean(ious)


class TestHeatmaps:
    def test_softmax_models_are_explained_through_their_logits(self):
        logits = randomised(pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3),
                                              classes=4, classifier_activation=None), std=0.3)
        softmax = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=4)
        softmax.set_weights(logits.get_weights())
        x = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype("float32")
        heat, classes = grad_cam(logits, x)
        np.testing.assert_allclose(grad_cam(softmax, x)[0], heat, atol=1e-5)
        assert feature_layer(logits).name == "stage4_block1_out"
        assert heat.shape == (3, 64, 64) and heat.min() >= 0 and heat.max() <= 1
        assert (classes == logits.predict(x, verbose=0).argmax(-1)).all()

    def test_vit_token_maps(self):
        model = randomised(pf_keras.create_model("vit_ti_max", depth=2, input_shape=(32, 32, 3), classes=5), std=0.2)
        x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
        assert feature_layer(model).name == "feature_map"  # final tokens on the (H/16, W/16) grid
        heat, _ = grad_cam(model, x, class_index=2)
        assert heat.shape == (2, 32, 32) and np.isfinite(heat).all() and heat.max() <= 1
        # The last block's tokens (batch, 4, C) are laid on the 2x2 patch grid.
        assert model.get_layer("block1").output.shape[1] == 4
        heat, _ = grad_cam(model, x, class_index=2, layer="block1")
        assert heat.shape == (2, 32, 32) and np.isfinite(heat).all()

    def test_pit_maps(self):
        model = randomised(pf_keras.PfPiT("ti", depths=(1, 1, 1), input_shape=(64, 64, 3), classes=5), std=0.2)
        layer = feature_layer(model)
        assert len(layer.output.shape) == 4
        heat, _ = grad_cam(model, np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype("float32"))
        assert heat.shape == (1, 64, 64) and np.isfinite(heat).all()

    def test_errors(self):
        model = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=4)
        x = np.zeros((1, 64, 64, 3), "float32")
        with pytest.raises(ValueError, match="class_index` must be in \\[0, 4\\). Received: class_index=4"):
            grad_cam(model, x, class_index=4)
        with pytest.raises(ValueError, match="Grad-CAM layer not found.*Received: layer='conv9'"):
            grad_cam(model, x, layer="conv9")
        with pytest.raises(ValueError, match="Received: layer='predictions' with output shape \\(None, 4\\)"):
            grad_cam(model, x, layer="predictions")
        features = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, include_top=False,
                                     input_shape=(64, 64, 3))
        with pytest.raises(ValueError, match="one \\(batch, classes\\) output"):
            grad_cam(features, x)

    def test_box_helpers(self):
        heat = np.zeros((10, 10), "float32")
        heat[2:5, 3:7] = 1.0
        assert heatmap_box(heat) == (2, 3, 4, 6)
        assert heatmap_box(np.zeros((4, 4))) is None
        assert box_iou((2, 3, 4, 6), (2, 3, 4, 6)) == 1.0
        assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)
        assert box_iou(None, (0, 0, 1, 1)) == 0.0


class TestOverlayAndCommand:
    def test_write_overlay(self, tmp_path):
        image = np.full((40, 30, 3), 128, np.uint8)
        heat = np.zeros((10, 10), np.float32)
        heat[0, 0] = 1.0
        path = write_overlay(tmp_path / "o.png", image, heat)
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (30, 40)
            out = np.asarray(img)
        assert not np.array_equal(out[0, 0], out[-1, -1])  # hot corner differs from the cold one
        assert os.listdir(tmp_path) == ["o.png"]  # atomic: no temp file left

    def test_command_writes_overlays_and_refuses_bad_files(self, tmp_path, capsys):
        model_path = str(tmp_path / "m.keras")
        pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=3).save(model_path)
        image, _ = builtin_data.example(0)
        Image.fromarray(image).save(tmp_path / "circle.jpg")
        out_dir = str(tmp_path / "cams")
        assert run_cli(main, ["--model", model_path, "--out_dir", out_dir, str(tmp_path / "circle.jpg")]) == 0
        assert "circle.jpg: class" in capsys.readouterr().out
        with Image.open(os.path.join(out_dir, "circle_gradcam.png")) as img:
            assert img.size == (40, 40)  # the overlay keeps the image's own size (the model saw 64x64)
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        assert run_cli(main, ["--model", model_path, "--out_dir", out_dir, str(tmp_path / "bad.jpg")]) == 2
        err = capsys.readouterr().err
        assert "error: Cannot read the image" in err and err.count("\n") == 1
        assert run_cli(main, ["--model", str(tmp_path / "none.keras"), "--out_dir", out_dir,
                              str(tmp_path / "circle.jpg")]) == 2
        assert "The model file does not exist" in capsys.readouterr().err
        # A zip bomb: 100 MiB of config.json in 0.1 MB, refused from the zip's directory before anything is inflated.
        import zipfile

        bomb = tmp_path / "bomb.keras"
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("config.json", "w",
                                                                                          force_zip64=True) as f:
            for _ in range(100):
                f.write(b" " * (1 << 20))
        assert run_cli(main, ["--model", str(bomb), "--out_dir", out_dir, str(tmp_path / "circle.jpg")]) == 2
        err = capsys.readouterr().err
        assert "(config.json 104,857,600), above the limits" in err and err.count("\n") == 1
        (tmp_path / "text.keras").write_text("not a zip")
        assert run_cli(main, ["--model", str(tmp_path / "text.keras"), "--out_dir", out_dir,
                              str(tmp_path / "circle.jpg")]) == 2
        assert "not a .keras (zip) archive" in capsys.readouterr().err

    def test_command_reads_a_training_run_folder(self, tmp_path, capsys):
        from pf_keras.weights.preset import write_preset

        kwargs = {"depths": (1, 1, 1, 1), "width_mult": 0.125, "block_kinds": "max", "input_shape": (32, 32, 3),
                  "classes": 10, "classifier_activation": None}
        run = tmp_path / "run"
        model = randomised(pf_keras.create_model("resnet50", **kwargs))
        write_preset(model, run / "final", metadata={"class_names": list(builtin_data.CLASSES)})  # as train does
        Image.fromarray(builtin_data.example(1)[0]).save(tmp_path / "square.png")
        assert run_cli(main, ["--model", str(run), "--out_dir", str(tmp_path / "o"), str(tmp_path / "square.png")]) == 0
        label = int(np.argmax(model.predict(
            pf_keras.preprocess_input(np.asarray(Image.fromarray(builtin_data.example(1)[0]).resize((32, 32),
                                      Image.BILINEAR))[None].astype("float32")), verbose=0)))
        assert f"class {label} ({builtin_data.CLASSES[label]})" in capsys.readouterr().out
        (run / "final" / "model.weights.h5").write_bytes(b"truncated")
        assert run_cli(main, ["--model", str(run), "--out_dir", str(tmp_path / "o"), str(tmp_path / "square.png")]) == 2
        err = capsys.readouterr().err
        assert "error: Cannot load the weights" in err and err.count("\n") == 1

    def test_a_run_from_before_final_is_one_line(self, tmp_path, capsys):
        run = tmp_path / "old_run"
        run.mkdir()
        (run / "model.json").write_text('{"name": "resnet50", "kwargs": {}}')
        Image.fromarray(builtin_data.example(1)[0]).save(tmp_path / "square.png")
        code = run_cli(main, ["--model", str(run), "--out_dir", str(tmp_path / "o"), str(tmp_path / "square.png")],
                       prog="pf-keras-gradcam")
        assert code == 2
        assert capsys.readouterr().err == (
            f"pf-keras-gradcam: error: {run} is a training run of an older pf-keras (model.json, no final/): rerun "
            f"its pf-keras-train command with --model_dir {run}; it resumes at the last checkpoint and writes the "
            f"model folder final/ without training again. Received: {str(run)!r}\n")


def _png_header(width: int, height: int) -> bytes:
    """A grey PNG that declares ``width`` x ``height`` pixels in 0.1 KB (its one IDAT row is all that is stored)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


class TestCommandInputs:
    @pytest.fixture(name="model_path")
    def _model_path(self, tmp_path) -> str:
        path = str(tmp_path / "m.keras")
        pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(32, 32, 3), classes=3).save(path)
        return path

    def test_images_with_the_same_name_get_their_own_overlays(self, tmp_path, model_path, capsys):
        for folder, value in (("a", 0), ("b", 255)):
            (tmp_path / folder).mkdir()
            Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(tmp_path / folder / "x.png")
        images = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")]
        assert run_cli(main, ["--model", model_path, "--output_dir", str(tmp_path / "o"), *images]) == 0
        out = capsys.readouterr().out
        assert f"{images[0]}: class" in out and out.rstrip().endswith(str(tmp_path / "o" / "x_2_gradcam.png"))
        assert sorted(os.listdir(tmp_path / "o")) == ["x_2_gradcam.png", "x_gradcam.png"]
        overlays = [np.asarray(Image.open(tmp_path / "o" / name)) for name in ("x_gradcam.png", "x_2_gradcam.png")]
        assert overlays[0].mean() < overlays[1].mean()  # the black image's overlay, then the white one's

    def test_a_jpeg_of_too_many_scans_is_one_line_before_decoding(self, tmp_path, model_path, capsys):
        from hostile_images import scan_bomb_jpeg

        from pf_keras.gradcam import read_image
        from pf_keras.preprocessing import MAX_JPEG_SCANS

        (tmp_path / "ok.jpg").write_bytes(scan_bomb_jpeg(MAX_JPEG_SCANS, 32))
        assert read_image(str(tmp_path / "ok.jpg"), (16, 16))[0].shape == (32, 32, 3)
        (tmp_path / "bomb.jpg").write_bytes(scan_bomb_jpeg(3000, 9459))  # ~20 s of libjpeg (Pillow's too)
        code = run_cli(main, ["--model", model_path, "--output_dir", str(tmp_path / "o"), str(tmp_path / "bomb.jpg")],
                       prog="pf-keras-gradcam")
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "a JPEG of more than 256 scans (its decoding time grows with scans x pixels)" in err

    def test_scan_markers_are_counted_across_read_blocks(self):
        import io

        from pf_keras.gradcam import _jpeg_scans_over_limit

        across = b"\0" * ((1 << 20) - 1) + b"\xff\xda"  # the first marker spans the first two 1 MiB blocks
        assert _jpeg_scans_over_limit(io.BytesIO(across + b"\xff\xda" * 256))
        assert not _jpeg_scans_over_limit(io.BytesIO(across + b"\xff\xda" * 255))
        assert not _jpeg_scans_over_limit(io.BytesIO(b"\xff\xda" * 250 + b"\0" * (1 << 20) + b"\xff\xda" * 6))

    def test_oversized_fifo_and_flag_errors_are_one_line(self, tmp_path, model_path, capsys):
        import warnings

        (tmp_path / "big.png").write_bytes(_png_header(12000, 12000))  # 144 MP: 11 GB once decoded
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = run_cli(main, ["--model", model_path, "--output_dir", str(tmp_path / "o"),
                                  str(tmp_path / "big.png")], prog="pf-keras-gradcam")
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "12000x12000 is 144,000,000 pixels, over the limit of 40,000,000" in err
        assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
        os.mkfifo(tmp_path / "fifo.png")
        assert run_cli(main, ["--model", model_path, "--output_dir", str(tmp_path / "o"),
                              str(tmp_path / "fifo.png")]) == 2
        assert "The image file is not a regular file" in capsys.readouterr().err
        assert run_cli(main, ["--model", model_path, "--output_dir", str(tmp_path / "o"), "--no_such_flag",
                              str(tmp_path / "big.png")], prog="pf-keras-gradcam") == 2
        err = capsys.readouterr().err
        assert err.startswith("pf-keras-gradcam: error: unrecognized arguments: --no_such_flag")
        assert err.count("\n") == 1
