"""pf_keras_export: export front end for pf_keras models (SavedModel, TFLite, validation, latency).

The repository's ``export/`` folder, installed as the package ``pf_keras_export`` (setup.py).
Library modules (no absl, no command-line parsing):

- :mod:`pf_keras_export.formats`: the format registry (name, file, tolerance, converter, runner).
- :mod:`pf_keras_export.saved_model`, :mod:`pf_keras_export.tflite`: the converters and runners.
- :mod:`pf_keras_export.litert`: flatbuffer op list, XNNPACK coverage, running a LiteRT file.
- :mod:`pf_keras_export.export_lib`, :mod:`~pf_keras_export.validate_lib`,
  :mod:`~pf_keras_export.benchmark_lib`, :mod:`~pf_keras_export.android_lib`: the four tools.
- :mod:`pf_keras_export.build`, :mod:`~pf_keras_export.images`, :mod:`~pf_keras_export.context`,
  :mod:`~pf_keras_export.files`: model building, images, conversion context, output folders.
- :mod:`pf_keras_export.report`: reading an export's ``report.json`` back, its fields checked.
- :mod:`pf_keras_export.torch_route`: the benchmark's official-model rows (litert-torch, run in
  another Python through ``litert_torch_convert.py``, a program that imports no pf_keras).

Command lines (thin argparse modules; console scripts after ``pip install``):
:mod:`~pf_keras_export.export` (``pf-keras-export``), :mod:`~pf_keras_export.validate`
(``pf-keras-validate``), :mod:`~pf_keras_export.benchmark` (``pf-keras-benchmark``),
:mod:`~pf_keras_export.android` (``pf-keras-android``); :mod:`~pf_keras_export.args` holds their
shared flags and :mod:`~pf_keras_export.quiet` keeps TensorFlow's C++ start-up lines off the terminal.

Importing the package imports nothing else (the command lines silence TensorFlow before importing it).
"""
