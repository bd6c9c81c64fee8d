"""Step-level parity with PyTorch: the port's Trainer against timm's optimizer, scheduler, loss and EMA.

The reference (``tests/fixtures/timm/step_parity.npz``) comes from
``tests/fixtures/make_timm_step_parity.py``: the official PyTorch models, seeded weights and
batches (rebuilt here with NumPy), timm's ``create_optimizer_v2`` / schedulers / losses /
``ModelEmaV2``, stepped as timm's ``train.py`` (ResNet, SGD) and DeiT's ``main.py`` (ViT,
AdamW) do. Here the same weights go through ``pf_keras``'s converter and ``loop.Trainer``
runs the steps, on one device and on 2 mirrored CPU replicas.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import pf_keras
from pf_keras_training import loop, recipes

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def _generator():
    spec = importlib.util.spec_from_file_location("make_timm_step_parity",
                                                  os.path.join(FIXTURES, "make_timm_step_parity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # NumPy only at import time
    return module


GEN = _generator()
with np.load(os.path.join(FIXTURES, "timm", "step_parity.npz")) as _data:
    REF = {k: _data[k] for k in _data.files}
with open(os.path.join(FIXTURES, "timm", "step_parity.json")) as _f:
    META = json.load(_f)

# Relative tolerances (max |port - torch| / max |torch| per tensor) after 1 and after 10 steps, fp32.
REL_1, REL_N = 1e-5, 1e-4
# BatchNorm moving variance: pf_keras.layers.BatchNormalization averages the unbiased batch
# variance like torch (keras.layers.BatchNormalization would average the biased one: up to 1/15 of
# the update here), so it is held to the same tolerance as every other tensor.


def _case_arrays(case: str, prefix: str) -> dict[str, np.ndarray]:
    head = f"{case}/{prefix}/"
    return {k[len(head):]: v for k, v in REF.items() if k.startswith(head)}


def _build(case: str):
    from pf_keras.models import resnet, vit

    if case.startswith("resnet"):
        kw = META["resnet_kwargs"]
        model = pf_keras.create_model("resnet50_hybrid", depths=tuple(kw["layer_setting"]), width_mult=kw["width_mult"],
                                      classes=kw["num_classes"], input_shape=(META["resnet_image"],) * 2 + (3,),
                                      classifier_activation=None)
        efficient = frozenset(layer.name[: -len("_spatial_avgpool")] for layer in model.layers
                              if layer.name.endswith("_spatial_avgpool"))
        return model, lambda name: resnet._torch_name(name, efficient_blocks=efficient)
    kw = META["vit_kwargs"]
    model = pf_keras.create_model("vit_s_max", patch_size=kw["patch_size"], hidden_dim=kw["embed_dim"],
                                  depth=kw["depth"], num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
                                  classes=kw["num_classes"], input_shape=(32, 32, 3), classifier_activation=None)
    return model, vit._torch_name


def _recipe(case: str) -> recipes.Recipe:
    common = {"data.global_batch_size": str(META["batch"]), "optim.base_batch_size": str(META["batch"]),
              "schedule.steps_per_epoch": str(META["steps_per_epoch"]), "schedule.epochs": "5"}
    if case.startswith("resnet"):  # resnet90 as it is, on a 5-epoch clock with a decay at epoch 4
        return recipes.apply_overrides(recipes.get_recipe("resnet90"), {**common, "schedule.step_epochs": "4",
                                                                          "optim.base_lr": "0.02"})
    return recipes.apply_overrides(recipes.get_recipe("deit300"), {
        **common, "schedule.warmup_epochs": "2", "model.ema_decay": "0.9", "model.drop_path_rate": "0"})


def _targets(case: str, labels: np.ndarray, step: int, recipe: recipes.Recipe) -> np.ndarray:
    from pf_keras_training import augment

    smoothing = recipe.optim.label_smoothing
    one_hot = augment.smooth_one_hot(tf.constant(labels), META["classes"], smoothing)
    if case != "vit":
        return one_hot.numpy()
    lam = GEN.mix_lambdas()[step]
    return augment.mix_targets(one_hot, tf.constant(lam, tf.float32)).numpy()


def _assert_close(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> float:
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= rel, f"{what}: max |port - torch| / max |torch| = {err:.2e} > {rel:.0e}"
    return err


def _compare_state(model, name_map, state: dict, rel: float, what: str, values=None) -> float:
    worst = 0.0
    values = values or {}
    for variable, expected in pf_keras.weights.plan_torch_transfer(model, state, name_map):
        got = values.get(variable.path, None)
        got, expected = np.asarray(variable.numpy() if got is None else got), np.asarray(expected)
        if variable.path.endswith("qkv/bias"):
            # The key bias has an exactly zero gradient (softmax ignores a shift shared by all keys):
            # both sides' Adam turns round-off into lr-sized steps of random sign. Queries and values only.
            n = got.shape[0] // 3
            got, expected = np.delete(got, np.s_[n:2 * n]), np.delete(expected, np.s_[n:2 * n])
        worst = max(worst, _assert_close(got, expected, rel, f"{what} {variable.path}"))
    return worst


def _run(case: str, strategy: tf.distribute.Strategy):
    recipe = _recipe(case)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model, name_map = _build(case)
        shapes = json.loads(str(REF[f"{case}/shapes"]))
        for variable, value in pf_keras.weights.plan_torch_transfer(model, GEN.init_state_dict(shapes, 0), name_map):
            variable.assign(value)
        optimizer = loop.build_optimizer(recipe, model, mixed_precision="float32")
        trainer = loop.Trainer(strategy=strategy, model=model, optimizer=optimizer, recipe=recipe,
                               steps_per_epoch=META["steps_per_epoch"])
    per = META["batch"] // replicas
    elements = []
    for step in range(META["steps"]):
        images, labels = GEN.batch(step, META["data_seeds"][case], META["image" if case == "vit" else "resnet_image"])
        images = np.transpose(images, (0, 2, 3, 1))
        targets = _targets(case, labels, step, recipe)
        if case == "vit":
            np.testing.assert_allclose(targets, REF["vit/targets"][step], rtol=0, atol=1e-6)
        for r in range(replicas):  # one per-replica batch per replica and step, in replica order
            part = slice(r * per, (r + 1) * per)
            elements.append({"images": images[part], "targets": targets[part].astype(np.float32),
                             "labels": labels[part], "skipped": np.zeros([per], np.int32)})
    stacked = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
    dataset = strategy.distribute_datasets_from_function(lambda ctx: tf.data.Dataset.from_tensor_slices(stacked))
    iterator = iter(dataset)
    losses = []
    for step in range(META["steps"]):
        loss, _, _ = trainer.train_loop(iterator, tf.constant(1))
        losses.append(float(loss))
        if step == 0 and any(k.startswith(f"{case}/sd1/") for k in REF):
            yield "step1", model, name_map, trainer, losses
    yield "stepN", model, name_map, trainer, losses


CASES = [("resnet", "resnet", 1), ("resnet_ddp2", "resnet_ddp2", 2), ("vit", "vit", 1), ("vit_mirrored", "vit", 2)]


@pytest.mark.parametrize("name, case, replicas", CASES, ids=[c[0] for c in CASES])
def test_steps_match_timm(name, case, replicas, mirrored_strategy):
    strategy = mirrored_strategy if replicas == 2 else tf.distribute.OneDeviceStrategy("/cpu:0")
    ref_loss = REF[f"{case}/loss"]
    for stage, model, name_map, trainer, losses in _run(case, strategy):
        if stage == "step1":
            _assert_close(np.array(losses), ref_loss[:1], REL_1, "loss of step 1")
            _compare_state(model, name_map, _case_arrays(case, "sd1"), REL_1, "after step 1:")
            continue
        _assert_close(np.array(losses), ref_loss, REL_N, "losses")
        worst = _compare_state(model, name_map, _case_arrays(case, "sdN"), REL_N, f"after {META['steps']} steps:")
        assert worst > 0  # compared something
        if trainer.ema:
            ema = {w.path: e.numpy() for w, e in zip(model.weights, trainer.ema, strict=True)}
            _compare_state(model, name_map, _case_arrays(case, "ema"), REL_N, "EMA:", values=ema)
        assert bool(trainer.ema) == (case == "vit")


@pytest.mark.parametrize("case", ["resnet", "vit"])
def test_no_decay_group_is_timms(case):
    """``loop.decay_variables``'s exempt set is exactly timm's no-decay group (1-D, biases, ``no_weight_decay()``)."""
    model, name_map = _build(case)
    shapes = json.loads(str(REF[f"{case}/shapes"]))
    keys = sorted(shapes)
    # Constant arrays holding each key's index reveal which torch key every variable receives.
    tagged = {k: np.full(shape, i, np.int64 if k.endswith("num_batches_tracked") else np.float32)
              for i, (k, shape) in enumerate((k, shapes[k]) for k in keys)}
    key_of = {v.path: keys[int(np.asarray(value).flat[0])]
              for v, value in pf_keras.weights.plan_torch_transfer(model, tagged, name_map)}
    _, no_decay = loop.decay_variables(model)
    assert sorted(key_of[v.path] for v in no_decay) == json.loads(str(REF[f"{case}/no_decay"]))
