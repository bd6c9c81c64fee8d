"""benchmark.py: training and input-pipeline throughput count the right images over the right time."""

from __future__ import annotations

import time

from pf_keras_training import benchmark, data, loop, recipes


class _Clock:
    """``benchmark.time`` for one call: the timed steps start at 100.0 s and end at 102.5 s."""

    def __init__(self):
        self.reads = []

    def perf_counter(self) -> float:
        self.reads.append(100.0 + 2.5 * len(self.reads))
        return self.reads[-1]


class TestBenchmark:
    def test_train_throughput_is_timed_steps_times_global_batch_over_their_time(self, monkeypatch):
        clock = _Clock()
        monkeypatch.setattr(benchmark, "time", clock)
        rate = benchmark.train_throughput("resnet50_max", model_kwargs={"depths": (1, 1, 1, 1), "width_mult": 0.125},
                                          image_size=32, batch_size=8, steps=2, warmup_steps=1,
                                          strategy=loop.create_strategy("one_device"))
        assert clock.reads == [100.0, 102.5]  # one interval: the warm-up step is not timed
        assert rate == 2 * 8 / 2.5

    def test_input_pipeline_throughput_is_bounded_by_the_time_of_the_whole_call(self, shapes_dir):
        cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=8, image_size=32, color_jitter=0.4)
        start = time.perf_counter()
        rate = data.input_pipeline_throughput(data.resolve_source(cfg), cfg, num_batches=3, threads=1)
        elapsed = time.perf_counter() - start
        # 3 batches of 8 were timed inside the call (its warm-up batch outside that interval): at least 24 / elapsed.
        assert rate >= 3 * 8 / elapsed


class TestBenchmarkErrors:
    def test_bad_values_are_one_line(self, capsys):
        assert benchmark.main(["--batch_size", "0", "--model", "resnet50"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "pf-keras-train-benchmark: error: `batch_size` must be >= 1. Received: batch_size=0"
