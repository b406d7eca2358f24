"""Training on several sources: per-folder draw weights and the label-quality filter of fan-edge label folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fan_edge.cli import train_main
from fan_edge.models import create_model, read_checkpoint
from fan_edge.train import TrainSpec, train
from fan_edge.train.sources import build_datasets, epoch_pool
from fan_edge.train.trainer import epoch_batches

TINY = "fan1-w32-i128"


def _subset(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".jpg", ".pts"):
            (dst / (name + suffix)).symlink_to(src / (name + suffix))
    return dst


def _names(folder: Path, n: int, skip: int = 0) -> list[str]:
    return [p.stem for p in sorted(folder.glob("*.jpg"))[skip:skip + n]]


@pytest.fixture()
def helen(data_dir: Path, tmp_path: Path) -> Path:
    return _subset(data_dir / "helen_train", tmp_path / "helen", _names(data_dir / "helen_train", 6))


@pytest.fixture()
def labelled(data_dir: Path, tmp_path: Path) -> Path:
    """A fan-edge label job's layout (label.json, labels.jsonl) over 8 real faces; faces 0-2 have high disagreement."""
    names = _names(data_dir / "helen_train", 8, skip=10)
    out = _subset(data_dir / "helen_train", tmp_path / "labelled", names)
    (out / "label.json").write_text(json.dumps({"teachers": ["default", "dlib"], "consensus": "mean"}))
    records = [{"image": f"{n}.jpg", "face": 0, "faces": 1, "disagreement": 6.0 if i < 3 else 1.0, "kept": True,
                "pts": f"{n}.pts", "out_image": f"{n}.jpg"} for i, n in enumerate(names)]
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _spec(data: list[Path], out: Path, **kw) -> TrainSpec:
    base = dict(model=TINY, data=[str(d) for d in data], out=str(out), epochs=1, batch_size=2, workers=0, seed=5)
    base.update(kw)
    return TrainSpec(**base)


def test_weights_set_how_often_each_face_is_drawn(helen: Path, labelled: Path, tmp_path: Path):
    model = create_model(TINY, weights=False)
    data = build_datasets(_spec([helen, labelled], tmp_path / "x", data_weights=[2.0, 0.5]), model, require_points=True)
    assert len(data) == 14
    pool = epoch_pool(data, seed=5, epoch=0)
    draws, faces = np.divmod(pool, len(data))
    assert sorted(faces[faces < 6].tolist()) == sorted(list(range(6)) * 2)  # every HELEN face twice
    assert (faces >= 6).sum() == 4 and len(set(faces[faces >= 6].tolist())) == 4  # a seeded half of the other
    assert np.array_equal(pool, epoch_pool(data, seed=5, epoch=0))
    assert not np.array_equal(pool, epoch_pool(data, seed=5, epoch=1))
    batches = epoch_batches(pool, 2, seed=5, epoch=0, rank=0, world=1)
    assert sorted(i for b in batches for i in b) == sorted(pool.tolist())
    # A second draw of a face is a different augmentation of the same face.
    data.set_epoch(0)
    first, second = data[0], data[len(data)]
    assert first["index"] == second["index"] == 0
    assert not np.allclose(first["image"], second["image"])
    np.testing.assert_array_equal(first["points"], second["points"])


def test_label_filter_leaves_out_disagreeing_faces(helen: Path, labelled: Path, tmp_path: Path):
    model = create_model(TINY, weights=False)
    data = build_datasets(_spec([helen, labelled], tmp_path / "x", max_label_disagreement=4.0), model, require_points=True)
    assert [len(p) for p in data.parts] == [6, 5]
    gt, labels = data.sources
    assert gt.kind == "ground truth" and gt.left_out == 0
    assert labels.kind == "teacher labels" and labels.teachers == ["default", "dlib"] and labels.left_out == 3
    assert "3 left out above 4% teacher disagreement" in labels.describe()


def test_card_names_every_source_and_the_epoch_time(helen: Path, labelled: Path, tmp_path: Path):
    out = tmp_path / "run"
    train(_spec([helen, labelled], out, data_weights=[3.0, 1.0], max_label_disagreement=2.0, max_batches=None))
    card = read_checkpoint(out / "final.safetensors").card
    sources = card["data"]["sources"]
    assert [s["weight"] for s in sources] == [3.0, 1.0]
    assert sources[1]["teachers"] == ["default", "dlib"] and sources[1]["left_out"] == 3
    assert card["epoch_seconds"] > 0
    assert "--data-weight 3 --data-weight 1" in card["recipe"] and "--max-label-disagreement 2.0" in card["recipe"]
    assert "drawn 3x per epoch" in (out / "train.log").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--data-weight", "1"], "1 --data-weight for 2 --data folders"),
    (["--data-weight", "1", "--data-weight", "0"], "--data-weight must be in (0, 100]"),
    (["--max-label-disagreement", "-1"], "--max-label-disagreement"),
])
def test_bad_source_settings_are_one_line(helen: Path, labelled: Path, tmp_path: Path, capsys, extra, message):
    rc = train_main(["--model", TINY, "--data", str(helen), "--data", str(labelled), "--out", str(tmp_path / "o"),
                     "--epochs", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err
