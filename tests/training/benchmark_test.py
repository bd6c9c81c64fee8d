"""benchmark.py: training and input-pipeline throughput functions return sane numbers."""

from __future__ import annotations

from pf_keras_training import benchmark, data, loop, recipes


class TestBenchmark:
    def test_train_throughput(self):
        rate = benchmark.train_throughput("resnet50_max", model_kwargs={"depths": (1, 1, 1, 1), "width_mult": 0.125},
                                          image_size=32, batch_size=8, steps=2, warmup_steps=1,
                                          strategy=loop.create_strategy("one_device"))
        assert rate > 0

    def test_input_pipeline_throughput(self, shapes_dir):
        cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=8, image_size=32, color_jitter=0.4)
        rate = data.input_pipeline_throughput(data.resolve_source(cfg), cfg, num_batches=3, threads=1)
        assert rate > 0


class TestBenchmarkErrors:
    def test_bad_values_are_one_line(self, capsys):
        assert benchmark.main(["--batch_size", "0", "--model", "resnet50"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "pf-keras-train-benchmark: error: `batch_size` must be >= 1. Received: batch_size=0"
