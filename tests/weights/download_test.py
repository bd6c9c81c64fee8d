"""Tests of pf_keras/weights/download.py and weights="imagenet": the Drive flow served from 127.0.0.1.

A tiny ResNet spec (the parity fixture's R50-max at depths (1, 2, 1, 1), width 0.125, with a
1000-class head) stands in for a published model, with its own manifest; its checkpoint URL is
a Drive link that the fake Drive (:mod:`fake_drive`, an HTTPS proxy on 127.0.0.1) serves.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import time
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, state_dict_of
from fake_drive import FakeDrive, make_certificate
from requests.adapters import HTTPAdapter
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras.models.specs import SPECS, Checkpoint, ModelSpec
from pf_keras.weights import download
from pf_keras.weights.download import DownloadError, fetch_checkpoint, max_checkpoint_bytes, sha256_of

FILE_ID = "1TinyCheckpointForTestsOnly0"
URL = f"https://drive.google.com/file/d/{FILE_ID}/view?usp=sharing"
TINY = {"depths": (1, 2, 1, 1), "block_kinds": "max", "width_mult": 0.125}
BUILD = {"input_shape": (64, 64, 3), "classifier_activation": None}
SEND = HTTPAdapter.send  # download.py replaces it only while a download runs


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(str(tmp_path_factory.mktemp("tls")))


def _use_proxy(monkeypatch, url: str) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, url)
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PF_KERAS_WEIGHTS_DIR", str(folder))
    monkeypatch.delenv("PF_KERAS_OFFLINE", raising=False)
    return folder


@pytest.fixture
def drive(certificate, monkeypatch, cache):
    with FakeDrive(*certificate) as fake:
        _use_proxy(monkeypatch, fake.proxy_url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
        yield fake


def _tiny_state_dict() -> dict[str, np.ndarray]:
    _, arrays = load_fixture("resnet_max_small")
    state_dict = state_dict_of(arrays)
    rng = np.random.default_rng(0)
    state_dict["fc.weight"] = rng.normal(0, 0.05, (1000, state_dict["fc.weight"].shape[1])).astype("float32")
    state_dict["fc.bias"] = rng.normal(0, 0.05, (1000,)).astype("float32")
    return state_dict


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Registers the spec "tiny_max"; returns (spec, checkpoint bytes, checkpoint path)."""
    state_dict = _tiny_state_dict()
    path = tmp_path / "tiny.pth"
    save_state_dict(str(path), state_dict)
    manifest = tmp_path / "tiny_manifest.json"
    manifest.write_text(json.dumps({"state_dict": {k: list(v.shape) for k, v in state_dict.items()}}))
    spec = ModelSpec("tiny_max", "resnet", "test stand-in", TINY, 0, 0.0, None, None,
                     (Checkpoint(URL, None, None),), manifest=str(manifest))
    monkeypatch.setitem(SPECS, "tiny_max", spec)
    return spec, path.read_bytes(), str(path)


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def _parts(folder) -> list[str]:
    """The partial files of the downloads running (or killed) in ``folder``."""
    return [f for f in _files(folder) if f.endswith(".part")]


def _wait_for(condition, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return condition()


def _fetch_when(go, spec: ModelSpec) -> None:
    go.wait(30)
    fetch_checkpoint(spec, quiet=True)


def _forked_downloads(spec: ModelSpec, count: int) -> tuple[list[multiprocessing.process.BaseProcess], Any]:
    """``count`` processes (flock owners of their own) that call fetch_checkpoint once ``go`` is set.

    Forked while the server is idle, so that no server thread holds a lock of OpenSSL's at the fork.
    """
    context = multiprocessing.get_context("fork")
    go = context.Event()
    processes = [context.Process(target=_fetch_when, args=(go, spec)) for _ in range(count)]
    for process in processes:
        process.start()
    return processes, go


def _killed_download(spec: ModelSpec, cache) -> str:
    """Starts a download that the server stalls half-way ("stall") and SIGKILLs it; returns its partial file."""
    (killed,), go = _forked_downloads(spec, 1)
    go.set()
    assert _wait_for(lambda: len(_parts(cache)) == 1)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    return _parts(cache)[0]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class TestFirstUse:
    def test_downloads_through_the_confirmation_page_verifies_converts_and_caches(self, drive, tiny, cache, capfd):
        spec, data, path = tiny
        drive.files[FILE_ID] = data
        model = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        # Drive's flow: the virus-scan page first, then the file from the form's action.
        assert drive.requests == [("drive.google.com", "/uc"), ("drive.usercontent.google.com", "/download")]
        stderr = capfd.readouterr().err
        digest = sha256_of(path)
        assert f"sha256 of tiny_max.pth (tiny_max): {digest}" in stderr  # printed so that it can be recorded
        assert "100%" in stderr  # gdown's progress bar
        assert (cache / "tiny_max.pth").read_bytes() == data
        assert _files(cache) == ["tiny_max.pth", "tiny_max/config.json", "tiny_max/metadata.json",
                                 "tiny_max/model.weights.h5"]
        reference = pf_keras.create_model("tiny_max", weights=path, **BUILD)
        for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        metadata = json.loads((cache / "tiny_max" / "metadata.json").read_text())
        assert metadata["source_sha256"] == digest and metadata["source_url"] == URL
        assert metadata["eval_transform"]["interpolation"] == "bilinear" and metadata["spec"] == "tiny_max"

    def test_next_load_reads_the_keras_cache_offline(self, drive, tiny, cache, monkeypatch):
        spec, data, path = tiny
        drive.files[FILE_ID] = data
        first = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        drive.requests.clear()
        _use_proxy(monkeypatch, _closed_port_url())  # no network from here on
        os.remove(cache / "tiny_max.pth")  # the converted preset alone must do
        second = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
        np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))
        assert drive.requests == []

    def test_headless_model_gets_its_own_cache_without_downloading_again(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        drive.requests.clear()
        model = pf_keras.create_model("tiny_max", weights="imagenet", include_top=False, pooling="avg",
                                      input_shape=(64, 64, 3))
        assert model.output_shape == (None, 256) and drive.requests == []
        assert os.path.isfile(cache / "tiny_max_notop" / "model.weights.h5")
        again = pf_keras.create_model("tiny_max", weights="imagenet", include_top=False, input_shape=(64, 64, 3))
        assert again.output_shape == (None, 2, 2, 256)

    def test_other_checkpoint_tags_have_their_own_files(self, drive, tiny, cache, monkeypatch):
        spec, data, _ = tiny
        longer_id = "1TinyLongerCheckpointForTests"
        longer = Checkpoint(f"https://drive.google.com/file/d/{longer_id}/view", None, None, tag="imagenet_longer")
        both = ModelSpec(**{**spec.__dict__, "checkpoints": (*spec.checkpoints, longer)})
        monkeypatch.setitem(SPECS, "tiny_max", both)
        drive.files[longer_id] = data
        pf_keras.create_model("tiny_max", weights="imagenet_longer", **BUILD)
        assert _files(cache) == ["tiny_max_imagenet_longer.pth", "tiny_max_imagenet_longer/config.json",
                                 "tiny_max_imagenet_longer/metadata.json", "tiny_max_imagenet_longer/model.weights.h5"]
        with pytest.raises(ValueError, match=r"has checkpoints \['imagenet', 'imagenet_longer'\]"):
            SPECS["tiny_max"].checkpoint("imagenet_21k")

    def test_a_file_put_there_by_hand_works_offline(self, tiny, cache, monkeypatch):
        spec, data, path = tiny
        _use_proxy(monkeypatch, _closed_port_url())
        os.makedirs(cache)
        (cache / "tiny_max.pth").write_bytes(data)
        model = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        assert model.get_layer("predictions").kernel.shape == (256, 1000)


class TestRefusals:
    def test_interrupted_transfer_one_line_nothing_cached_retry_works(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.plan[FILE_ID] = ["truncate"]
        with pytest.raises(DownloadError, match="incomplete.*nothing was cached") as error:
            fetch_checkpoint(spec, quiet=True)
        assert "\n" not in str(error.value) and "kept in" not in str(error.value)
        assert _files(cache) == []  # no partial file, no temporary folder
        assert fetch_checkpoint(spec, quiet=True) == str(cache / "tiny_max.pth")
        assert (cache / "tiny_max.pth").read_bytes() == data

    def test_wrong_file_is_refused_and_not_cached(self, drive, tiny, cache):
        spec, _, _ = tiny
        with open(os.path.join(FIXTURES, "pth", "resnet_max_small.pth"), "rb") as f:
            drive.files[FILE_ID] = f.read()  # 10-class head: not the file the manifest describes
        with pytest.raises(DownloadError, match=r"refused.*not the official tiny_max checkpoint.*mis-shaped keys \["
                                                r"'fc.bias', 'fc.weight'\].*nothing was cached") as error:
            pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        assert "\n" not in str(error.value)
        assert _files(cache) == []

    def test_html_instead_of_a_checkpoint_is_refused(self, drive, tiny, cache):
        spec, _, _ = tiny
        drive.files[FILE_ID] = b"<html><body>Sign in</body></html>"
        with pytest.raises(DownloadError, match="not a PyTorch zip checkpoint"):
            fetch_checkpoint(spec, quiet=True)
        assert _files(cache) == []

    def test_drive_quota_page_is_one_line(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.plan[FILE_ID] = ["quota"]
        with pytest.raises(DownloadError, match="Too many users have viewed or downloaded") as error:
            fetch_checkpoint(spec, quiet=True)
        assert "\n" not in str(error.value) and _files(cache) == []

    def test_recorded_sha256_is_enforced(self, drive, tiny, cache, monkeypatch):
        spec, data, path = tiny
        drive.files[FILE_ID] = data
        wrong = ModelSpec(**{**spec.__dict__, "checkpoints": (Checkpoint(URL, None, None, sha256="0" * 64),)})
        with pytest.raises(DownloadError, match="sha256 [0-9a-f]{64}, expected 0000"):
            fetch_checkpoint(wrong, quiet=True)
        assert _files(cache) == []
        right = ModelSpec(**{**spec.__dict__, "checkpoints": (Checkpoint(URL, None, None, sha256=sha256_of(path)),)})
        assert os.path.isfile(fetch_checkpoint(right, quiet=True))


class TestNoNetwork:
    def test_one_line_says_where_to_put_the_file(self, tiny, cache, monkeypatch):
        spec, _, _ = tiny
        _use_proxy(monkeypatch, _closed_port_url())
        with pytest.raises(DownloadError) as error:
            pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        message = str(error.value)
        assert "\n" not in message
        assert f"download {URL} in a browser and save it as {cache / 'tiny_max.pth'}" in message
        assert _files(cache) == []

    def test_offline_switch_never_connects(self, tiny, cache, monkeypatch):
        spec, _, _ = tiny
        monkeypatch.setenv("PF_KERAS_OFFLINE", "1")
        with pytest.raises(DownloadError, match=re.escape(f"PF_KERAS_OFFLINE is set: download {URL}")):
            fetch_checkpoint(spec)


class TestPublishedCheckpoints:
    def test_every_official_link_is_a_drive_file(self):
        for name in pf_keras.list_models(pretrained=True):
            for checkpoint in SPECS[name].checkpoints:
                assert checkpoint.drive_id and len(checkpoint.drive_id) == 33, (name, checkpoint.url)

    def test_imagenet_refuses_other_architectures_before_downloading(self, cache, monkeypatch):
        monkeypatch.setenv("PF_KERAS_OFFLINE", "1")
        with pytest.raises(ValueError, match="published configurations.*Received: depths=\\(1, 1, 1, 1\\)"):
            pf_keras.create_model("resnet50_max", weights="imagenet", depths=(1, 1, 1, 1))
        with pytest.raises(ValueError, match="1000-class head.*Received: classes=10"):
            pf_keras.create_model("resnet50_max", weights="imagenet", classes=10)
        assert not os.path.exists(cache)


class TestDamagedCache:
    @pytest.mark.parametrize("damage", ["weights_truncated", "config_garbage"])
    def test_a_damaged_converted_cache_is_converted_again_offline(self, drive, tiny, cache, monkeypatch, damage):
        spec, data, path = tiny
        drive.files[FILE_ID] = data
        first = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        _use_proxy(monkeypatch, _closed_port_url())  # the verified .pth in the cache must do
        preset = next(p for p in cache.iterdir() if p.is_dir())
        if damage == "weights_truncated":
            weights = preset / "model.weights.h5"
            weights.write_bytes(weights.read_bytes()[:1000])
        else:
            (preset / "config.json").write_text("{not json")
        with pytest.warns(UserWarning, match=r"cached converted weights .* are damaged"):
            second = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)
        x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
        np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))
        third = pf_keras.create_model("tiny_max", weights="imagenet", **BUILD)  # the cache is whole again
        np.testing.assert_array_equal(first.predict(x, verbose=0), third.predict(x, verbose=0))


class TestHostileServer:
    """Every broken or hostile answer ends as one DownloadError, soon, leaving nothing in the cache."""

    def _refused(self, spec: ModelSpec, cache, match: str, within_s: float = 5.0) -> str:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=match) as error:
            fetch_checkpoint(spec, quiet=True)
        assert time.monotonic() - start < within_s
        message = str(error.value)
        assert "\n" not in message and f"from {URL} failed" in message and "nothing was cached" in message
        assert _files(cache) == [] and HTTPAdapter.send is SEND
        return message

    @pytest.mark.parametrize(("page", "mode", "match"), [
        pytest.param("ok", "no_content_type", "bad response: KeyError: 'content-type'", id="no_content_type"),
        pytest.param("ok", "bad_date", 'bad response: ValueError: Invalid date value or format "not a date"',
                     id="bad_last_modified"),
        pytest.param("no_action", "ok", "bad response: KeyError: 'action'", id="form_without_action"),
        pytest.param("no_name", "ok", "bad response: KeyError: 'name'", id="input_without_name"),
    ])
    def test_malformed_answers(self, drive, tiny, cache, page, mode, match):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.pages[FILE_ID] = page
        drive.plan[FILE_ID] = [mode]
        self._refused(spec, cache, re.escape(match))

    def test_a_confirmation_page_pointing_at_itself_stops_after_max_requests(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.pages[FILE_ID] = "loop"
        self._refused(spec, cache, r"more than 10 requests, the last to https://drive\.google\.com/uc\?id=")
        assert len(drive.requests) == download.MAX_REQUESTS == 10

    def test_a_trickle_is_cut_by_the_minimum_average_rate(self, drive, tiny, cache, monkeypatch):
        spec, data, _ = tiny
        monkeypatch.setattr(download, "RATE_GRACE_S", 0.5)
        monkeypatch.setattr(download, "WATCH_INTERVAL_S", 0.05)
        drive.files[FILE_ID] = data
        drive.plan[FILE_ID] = ["trickle"]  # a byte every 0.1 s: each one well within the socket timeout
        self._refused(spec, cache, r"\(\d+ bytes in 1 s, under the minimum average rate of 65536 bytes/s\)")

    @pytest.mark.parametrize(("page", "mode", "match"), [
        pytest.param("ok", "endless", r"the file \S+ sent more than the {limit} bytes expected", id="endless_file"),
        pytest.param("ok", "gzip_bomb", r"the file \S+ sent more than the {limit} bytes expected", id="gzip_bomb"),
        pytest.param("ok", "huge", r"the file \S+ announces 1099511627776 bytes, more than the {limit} expected",
                     id="huge_content_length"),
        pytest.param("endless", "ok", r"the page https://drive\.google\.com/uc\S+ sent more than the 1048576 bytes "
                     "expected", id="endless_page"),
    ])
    def test_bodies_stop_at_the_expected_size(self, drive, tiny, cache, monkeypatch, page, mode, match):
        spec, data, _ = tiny
        monkeypatch.setattr(download, "SIZE_SLACK_BYTES", 0)
        limit = max_checkpoint_bytes(spec)
        assert limit == 4 * 4 * 351_447 and len(data) < limit  # 4x the float32 weights of the tiny manifest
        drive.files[FILE_ID] = data
        drive.pages[FILE_ID] = page
        drive.plan[FILE_ID] = [mode]
        self._refused(spec, cache, match.format(limit=limit))

    def test_an_interrupt_is_not_turned_into_a_download_error(self, drive, tiny, cache, monkeypatch):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data

        def interrupted(transfer, url: str) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C came while gdown sends a request

        monkeypatch.setattr(download._Transfer, "on_request", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fetch_checkpoint(spec, quiet=True)
        assert _files(cache) == [] and HTTPAdapter.send is SEND

    def test_a_killed_download_is_removed_by_the_next_one(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.plan[FILE_ID] = ["stall"]
        _killed_download(spec, cache)
        older = cache / ".tiny_max.pf-tmp-download-older"  # an older version's folder: no lock file
        older.mkdir()
        (older / "tiny_max.pth1a2b3c4d.part").write_bytes(b"\0" * 1000)
        assert len(_parts(cache)) == 2
        fetch_checkpoint(spec, quiet=True)
        assert _files(cache) == ["tiny_max.pth"]

    def test_concurrent_downloads_keep_each_others_folders(self, drive, tiny, cache):
        spec, data, _ = tiny
        drive.files[FILE_ID] = data
        drive.plan[FILE_ID] = ["stall"] * 5
        stale = _killed_download(spec, cache)
        running, go = _forked_downloads(spec, 4)
        go.set()
        try:  # all four hold half the file, each having cleaned the folders while the others ran
            assert _wait_for(lambda: len(_parts(cache)) == 4 and stale not in _parts(cache))
        finally:
            drive.release.set()
            for process in running:
                process.join(30)
        assert [process.exitcode for process in running] == [0] * 4
        assert _files(cache) == ["tiny_max.pth"] and (cache / "tiny_max.pth").read_bytes() == data
