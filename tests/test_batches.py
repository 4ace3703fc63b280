"""Batches read from the memory map: every row once per epoch, reproducible, evaluation in order."""

from __future__ import annotations

import numpy as np
import pytest

from engine.training.batches import ImageBatches


@pytest.fixture
def memmap(tmp_path):
    images = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(23, 4, 4))
    images[:] = np.arange(23, dtype=np.uint8)[:, None, None]
    images.flush()
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def _epoch(batches: ImageBatches) -> list[np.ndarray]:
    return [batches[i] for i in range(len(batches))]


def test_each_training_row_once_per_epoch_with_its_label(memmap):
    labels = np.arange(23) % 3
    indices = np.arange(2, 23)
    batches = ImageBatches(memmap, labels, indices, batch_size=5, seed=7)
    assert len(batches) == 5
    for _ in range(3):
        epoch = _epoch(batches)
        rows = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch])
        assert sorted(rows.tolist()) == indices.tolist()
        for x, y in epoch:
            assert x.shape[1:] == (4, 4, 1) and x.dtype == np.uint8
            assert np.array_equal(y, labels[x[:, 0, 0, 0]])
            assert np.all(np.diff(x[:, 0, 0, 0].astype(int)) > 0), "rows inside a batch are read in file order"
        batches.on_epoch_end()


def test_shuffle_is_seeded_and_changes_every_epoch(memmap):
    labels = np.zeros(23, dtype=np.int64)
    first = ImageBatches(memmap, labels, np.arange(23), batch_size=4, seed=1)
    again = ImageBatches(memmap, labels, np.arange(23), batch_size=4, seed=1)
    other = ImageBatches(memmap, labels, np.arange(23), batch_size=4, seed=2)
    epoch_0 = first.order.copy()
    assert np.array_equal(epoch_0, again.order)
    assert not np.array_equal(epoch_0, other.order)
    first.on_epoch_end()
    assert not np.array_equal(epoch_0, first.order)


def test_evaluation_batches_keep_the_given_order_and_have_no_labels(memmap):
    indices = np.array([9, 3, 17, 0, 5])
    batches = ImageBatches(memmap, None, indices, batch_size=2)
    epoch = _epoch(batches)
    assert [len(b) for b in epoch] == [1, 1, 1]
    assert np.concatenate([b[0][:, 0, 0, 0] for b in epoch]).tolist() == indices.tolist()
    with pytest.raises(IndexError, match="batch index 3 is out of range for 3 batches"):
        batches[3]


def test_batch_size_is_checked(memmap):
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        ImageBatches(memmap, None, np.arange(3), batch_size=0)
