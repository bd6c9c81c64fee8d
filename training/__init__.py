"""ImageNet training of pf_keras models on tf.distribute (scripts: train.py, evaluate.py, benchmark.py)."""
