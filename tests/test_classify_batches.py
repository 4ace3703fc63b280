"""Uploads go through the model a few at a time, so a server's memory does not grow with their number."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.special import softmax

from engine.models.inference import CLASSIFY_CHUNK, Classifier


class Recorder:
    """A serving graph whose probabilities follow each image's mean grey level; it records its batch sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def predict_on_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        self.sizes.append(n)
        mean = batch.mean(axis=(1, 2, 3)) / 255.0
        logits = np.stack([4 * mean, 4 * (1 - mean), np.full(n, 1.0)], axis=1)
        maps = np.broadcast_to(mean[:, None, None, None], (n, 4, 4, 3)).astype(np.float32)
        return {"probabilities": softmax(logits, axis=1), "class_maps": maps, "features": np.zeros((n, 8))}


def _png(level: int) -> bytes:
    pixels = np.full((32, 32), level, dtype=np.uint8)
    pixels[8:24, 8:24] = 255 - level
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_classified_a_chunk_at_a_time_with_the_figures_of_one_at_a_time():
    recorder = Recorder()
    model = Classifier(recorder, classes=("COVID-19", "Normal", "Viral Pneumonia"), input_size=16, info={})
    uploads = [(f"{i}.png", _png(level)) for i, level in enumerate((10, 60, 110, 160, 210))]
    uploads.insert(2, ("broken.png", b"%PDF-1.4 not an image"))

    together = model.classify(uploads)

    assert recorder.sizes == [CLASSIFY_CHUNK, CLASSIFY_CHUNK, 5 - 2 * CLASSIFY_CHUNK]
    assert together[2].error and not together[2].probabilities
    for (name, data), result in zip(uploads, together, strict=True):
        if result.error:
            continue
        (alone,) = model.classify([(name, data)])
        assert result.probabilities == alone.probabilities and result.predicted == alone.predicted
        np.testing.assert_array_equal(result.heatmap, alone.heatmap)
    assert len({r.predicted for r in together if not r.error}) == 2, "the grey levels must give different classes"
