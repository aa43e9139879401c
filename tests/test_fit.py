"""The one training loop (downstream.fit): model selection, schedules, determinism, the teacher-logit
cache, process checks, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from downstream.data.inputs import Inputs
from downstream.data.record import Record
from downstream.fit import FitConfig, fit
from downstream.kd.data import balanced_subset
from downstream.kd.pipeline import seed_everything
from downstream.kd.tasks import teacher_logits
from downstream.loaders import make_loader
from downstream.tasks import Classification
from sonodistill.errors import UserError
from sonodistill.world import make_accelerator


class Toy(Dataset):
    """Gray 8x8 images whose class is which half is brighter; items like downstream's ImageSet."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.images = torch.randint(0, 120, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        for i, y in enumerate(self.labels):
            self.images[i, :, :, 4 * int(y) : 4 * int(y) + 4] += 100

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )


INPUTS = Inputs(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def task(model=None) -> Classification:
    return Classification(model if model is not None else tiny_model(), INPUTS, ["left", "right"])


def loader(data, batch_size, shuffle, seed=0):
    return make_loader(data, batch_size, train=shuffle, seed=seed)


def train_once(select: str, seed: int = 0, **optim):
    seed_everything(seed)
    t = task()
    settings = {
        "optimizer": "adam",
        "lr": 0.05,
        "weight_decay": 0.0,
        "epochs": 4,
        "batch_size": 8,
        "schedule": "none",
        **optim,
    }
    cfg = FitConfig(select=select, **settings)
    res = fit(
        t,
        loader(Toy(48), 8, shuffle=True, seed=seed),
        loader(Toy(24, seed=1), 8, shuffle=False),
        cfg,
        make_accelerator("no"),
        name="toy",
    )
    return t, res


def test_selection_keeps_the_best_validation_epoch():
    t, res = train_once("val_loss")
    losses = [row["val_loss"] for row in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    acc = make_accelerator("no")
    pred = t.predict(loader(Toy(24, seed=1), 8, shuffle=False), acc)
    assert float(pred["loss"]) == pytest.approx(min(losses), rel=1e-5)  # the model holds the selected epoch
    assert sorted(pred["index"].tolist()) == list(range(24))
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_macro_f1", "lr", "images_per_s"} <= set(res.history[0])
    _, by_acc = train_once("auto")  # a classification task selects on validation accuracy
    accs = [row["val_accuracy"] for row in by_acc.history]
    assert by_acc.best_epoch == int(np.argmax(accs)) + 1  # ties keep the earlier epoch
    _, by_old_name = train_once("val_acc")  # the name before issue 15 selects the same epoch
    assert by_old_name.best_epoch == by_acc.best_epoch


def test_train_accuracy_is_the_fraction_of_correct_training_predictions():
    _, res = train_once("last")
    for row in res.history:
        assert 0.0 <= row["train_accuracy"] <= 1.0
        assert row["train_accuracy"] * 48 == pytest.approx(round(row["train_accuracy"] * 48), abs=1e-4)


def test_cosine_schedule_warms_up_then_decays_to_min_lr_per_step():
    _, res = train_once("last", schedule="cosine", warmup_epochs=1, min_lr=1e-3)
    lrs = [row["lr"] for row in res.history]  # after the last step of each epoch (6 steps per epoch)
    assert lrs[0] == pytest.approx(0.05)  # end of the one warm-up epoch: the peak
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]
    assert lrs[-1] == pytest.approx(1e-3)  # the floor at the last step


def test_plateau_schedule_halves_lr_when_validation_loss_stalls():
    _, res = train_once("last", schedule="plateau", plateau_factor=0.5, plateau_patience=0, lr=0.5)
    lrs = [row["lr"] for row in res.history]
    losses = [row["val_loss"] for row in res.history]
    for i in range(1, len(lrs)):  # the lr of epoch i+1 drops iff epoch i did not improve on the best so far
        stalled = losses[i - 1] >= min(losses[: i - 1] or [float("inf")])
        assert lrs[i] == pytest.approx(lrs[i - 1] * (0.5 if stalled else 1.0))


def test_unknown_selection_metric_lists_the_valid_ones():
    with pytest.raises(UserError, match="select=val_dice is not a validation metric.*val_accuracy"):
        train_once("val_dice")


def test_same_seed_same_weights():
    a, _ = train_once("last", seed=3)
    b, _ = train_once("last", seed=3)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(x, y, msg=k)


def test_cached_teacher_logits_equal_the_teacher_per_sample():
    torch.manual_seed(0)
    teacher = tiny_model().eval()
    data = Toy(20)
    shuffled = torch.utils.data.DataLoader(data, batch_size=6, shuffle=True)  # order must not matter
    table = teacher_logits(task(teacher), shuffled, torch.device("cpu"), len(data))
    with torch.no_grad():
        direct = teacher(INPUTS(torch.stack([data[i]["image"] for i in range(20)]), train=False))
    torch.testing.assert_close(table, direct)


def test_world_size_the_accelerator_cannot_see_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="WORLD_SIZE=2"):
        make_accelerator("no")


def test_fit_needs_a_batch_and_validation_for_selection():
    cfg = FitConfig(batch_size=8, select="val_accuracy", epochs=1)
    with pytest.raises(UserError, match="validation split"):
        fit(task(), loader(Toy(16), 8, shuffle=True), None, cfg, make_accelerator("no"), name="x")
    with pytest.raises(UserError, match="smaller than one batch"):  # an empty training subset
        fit(
            task(),
            loader(Toy(0), 8, shuffle=False),
            None,
            FitConfig(batch_size=8, select="last"),
            make_accelerator("no"),
            name="x",
        )


def test_balanced_subset_takes_n_per_class():
    recs = [Record(id=str(i), image=f"{i}.png", label=i % 3) for i in range(30)] + [
        Record(id=f"x{i}", image="x.png", label=2) for i in range(5)
    ]
    sub = balanced_subset(recs, 4, seed=0)
    assert sorted(np.bincount([r.label for r in sub]).tolist()) == [4, 4, 4]
    assert [r.id for r in sub] == [r.id for r in balanced_subset(recs, 4, seed=0)]
    assert [r.id for r in sub] != [r.id for r in balanced_subset(recs, 4, seed=1)]
    assert len(balanced_subset(recs, 100, seed=0)) == len(recs)  # small classes keep everything
    assert balanced_subset(recs, 0, seed=0) == recs


WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[2])
    from test_fit import Toy, loader, task
    from downstream.fit import FitConfig, fit
    from downstream.kd.pipeline import seed_everything
    from sonodistill.world import make_accelerator
    acc = make_accelerator("no")
    seed_everything(0)
    t = task()
    cfg = FitConfig(optimizer="adam", lr=0.05, weight_decay=0.0, epochs=2, batch_size=4, select="val_accuracy")
    res = fit(t, loader(Toy(32), 4, shuffle=True), loader(Toy(10, seed=1), 4, shuffle=False), cfg, acc, name="toy")
    pred = t.predict(acc.prepare(loader(Toy(10, seed=1), 4, shuffle=False)), acc)
    w = sum(float(p.sum()) for p in t.model.parameters())
    # 6 images in batches of 4: one full batch, the short one dropped; with 2 processes each would
    # train no step, so the short batch is kept
    from downstream.loaders import make_loader
    small = fit(task(), make_loader(Toy(6), 4, train=True), None, FitConfig(batch_size=4, epochs=1, select="last"),
                acc, name="small")
    out = {"rank": acc.process_index, "n": acc.num_processes, "index": sorted(pred["index"].tolist()),
           "hist": res.history[-1]["train_loss"], "w": w, "small": small.history[-1].get("train_loss")}
    open(sys.argv[1] + f"/rank{acc.process_index}.json", "w").write(json.dumps(out))
    acc.wait_for_everyone()  # both ranks done before either tears the group down
""")


@pytest.mark.dist
def test_torchrun_two_ranks_train_one_model(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        os.path.dirname(__file__),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    written = all((tmp_path / f"rank{i}.json").is_file() for i in (0, 1))
    # Once in many loaded CI runs a rank aborted in the interpreter's teardown, after its results and
    # the process group's destruction (gloo's worker threads; pytorch/pytorch#179291): the training
    # under test is done and checked below; any other failure fails here.
    teardown = written and "terminate called without an active exception" in proc.stderr
    assert proc.returncode == 0 or teardown, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["n"] == r1["n"] == 2
    assert r0["index"] == r1["index"] == list(range(10))  # gathered predictions: every sample exactly once
    assert r0["hist"] == pytest.approx(r1["hist"])  # epoch statistics reduced over both ranks
    assert r0["w"] == pytest.approx(r1["w"], rel=1e-6)  # DDP kept the replicas identical
    assert r0["small"] is not None and r0["small"] == pytest.approx(r1["small"])  # a step was trained
