"""pf_keras_training: the training front end of pf_keras models on tf.distribute.

The repository's ``training/`` folder, installed as the package ``pf_keras_training`` (setup.py).
Commands (argparse, ``--help`` lists that tool's flags; :mod:`pf_keras_training.commands` holds the
installed entry points): ``pf-keras-train`` (train.py), ``pf-keras-evaluate`` (evaluate.py),
``pf-keras-train-benchmark`` (benchmark.py), ``pf-keras-study`` (study.py); ``python training/<tool>.py``
does the same in the repository. Importing the package imports nothing else.
"""
