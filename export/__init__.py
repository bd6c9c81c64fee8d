"""Export front end for pf_keras models: SavedModel, TFLite, validation and latency benchmarks.

Not an installed package: run the stages from the repository root, e.g.
``python export/export.py --model resnet50_hybrid --output_dir out`` or
``python export/benchmark.py``. Modules:

- :mod:`export.saved_model`: the serving SavedModel (float or uint8 input).
- :mod:`export.tflite`: TFLite conversion (fp32, fp16, dynamic-range, full-integer int8).
- :mod:`export.validate`: loads every file back and compares it with Keras.
- :mod:`export.benchmark`: host latency table, CSV and plot.
- :mod:`export.android`: the same on an Android phone with LiteRT's ``benchmark_model``.
- :mod:`export.images`: deterministic calibration and validation images.
- :mod:`export.export`: the front end tying them together.
"""
