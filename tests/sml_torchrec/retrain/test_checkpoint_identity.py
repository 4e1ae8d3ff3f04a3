"""Which run a checkpoint belongs to: fingerprints, prepare() and rotation by run id."""


import pytest
import torch

from recsys_common.errors import UserError
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
from sml_torchrec.retrain import checkpoint
from sml_torchrec.retrain.config import RetrainConfig
from tests.files import file_tree

TINY = SyntheticConfig(num_users=60, periods=5, initial_items=20, new_items_per_period=5, seed=3)


def _identity(run_id="a", dataset=None, **cfg):
    return checkpoint.RunIdentity(run_id, dataset or {"metadata.json": "1:x"},
                                  RetrainConfig(**cfg).decisive())


def _save(root, steps, ident):
    for step in steps:
        checkpoint.save(root, step, {"w": torch.full((3,), float(step))}, {"step": step},
                        keep=2, identity=ident)


def test_fingerprint_sees_a_rebuild_with_the_same_shape(tmp_path):
    build_synthetic(tmp_path / "d", TINY)
    before = checkpoint.dataset_fingerprint(tmp_path / "d")
    assert "metadata.json" in before and "periods/period=00004.parquet" in before
    build_synthetic(tmp_path / "d", SyntheticConfig(**{**TINY.__dict__, "seed": 4}),
                    overwrite=True)
    after = checkpoint.dataset_fingerprint(tmp_path / "d")
    assert set(after) == set(before) and after != before
    assert checkpoint.dataset_fingerprint(tmp_path / "d") == after  # deterministic


def test_matching_run_resumes_its_newest_checkpoint(tmp_path):
    ident = _identity("run1")
    _save(tmp_path, [0, 1], ident)
    now, resume = checkpoint.prepare(tmp_path, ident.dataset, ident.config, True, False)
    assert resume == tmp_path / "ckpt-000001" and now.run_id == "run1"


@pytest.mark.parametrize("change,fragment", [
    ({"dataset": {"metadata.json": "1:y"}}, "dataset files changed: metadata.json"),
    ({"dim": 64}, "dim: 32 -> 64"),
])
def test_another_run_is_refused_and_left_alone(tmp_path, change, fragment):
    _save(tmp_path, [0, 1], _identity("run1"))
    (tmp_path / "notes.txt").write_text("mine")
    before = file_tree(tmp_path)
    other = _identity("run2", **change)
    with pytest.raises(UserError, match=fragment) as info:
        checkpoint.prepare(tmp_path, other.dataset, other.config, True, False)
    assert "--overwrite" in str(info.value) and "--checkpoint-dir" in str(info.value)
    assert file_tree(tmp_path) == before


def test_overwrite_discards_only_the_checkpoints(tmp_path):
    _save(tmp_path, [0, 1], _identity("run1"))
    (tmp_path / "notes.txt").write_text("mine")
    other = _identity("run2", dim=64)
    now, resume = checkpoint.prepare(tmp_path, other.dataset, other.config, True, True)
    assert resume is None and now.run_id != "run1"
    assert checkpoint.list_checkpoints(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_no_resume_over_an_earlier_run_needs_overwrite(tmp_path):
    ident = _identity("run1")
    _save(tmp_path, [5, 6], ident)
    before = file_tree(tmp_path)
    with pytest.raises(UserError, match=r"--no-resume: .* ckpt-000006.*--overwrite"):
        checkpoint.prepare(tmp_path, ident.dataset, ident.config, False, False)
    assert file_tree(tmp_path) == before
    now, resume = checkpoint.prepare(tmp_path, ident.dataset, ident.config, False, True)
    assert resume is None and now.run_id != "run1" and not checkpoint.list_checkpoints(tmp_path)


def test_only_damaged_checkpoints_are_refused(tmp_path):
    ident = _identity("run1")
    _save(tmp_path, [0], ident)
    (tmp_path / "ckpt-000000" / "extra.pt").write_bytes(b"")
    with pytest.raises(UserError, match="only damaged checkpoints"):
        checkpoint.prepare(tmp_path, ident.dataset, ident.config, True, False)


def test_checkpoint_without_identity_is_not_resumed(tmp_path):
    _save(tmp_path, [0], None)  # written before checkpoints recorded their run
    ident = _identity("run1")
    with pytest.raises(UserError, match="records no dataset fingerprint"):
        checkpoint.prepare(tmp_path, ident.dataset, ident.config, True, False)


def test_rotation_never_deletes_another_runs_checkpoints(tmp_path):
    # The old failure: a new run's low steps sorted before an old run's high steps, so keeping
    # "the last 2" deleted the new run's checkpoints and a crash then resumed the old run.
    _save(tmp_path, [7, 8], _identity("old"))
    _save(tmp_path, [0, 1, 2], _identity("new"))
    owners = {d.name: checkpoint.identity_of(d)["run_id"]
              for d in checkpoint.list_checkpoints(tmp_path)}
    assert owners == {"ckpt-000001": "new", "ckpt-000002": "new", "ckpt-000007": "old",
                      "ckpt-000008": "old"}


def test_a_step_of_another_run_is_never_replaced(tmp_path):
    _save(tmp_path, [1], _identity("old"))
    before = file_tree(tmp_path)
    with pytest.raises(RuntimeError, match="belongs to another run"):
        _save(tmp_path, [1], _identity("new"))
    assert file_tree(tmp_path) == before


def test_resume_hint_names_the_newest_complete_checkpoint(tmp_path):
    assert checkpoint.resume_hint(tmp_path) == ""
    _save(tmp_path, [3, 4], _identity())
    assert checkpoint.resume_hint(tmp_path).startswith(
        "rerunning the same command resumes from checkpoint 4 (")
