"""ONNX int8 of the demo's frozen MobileNet 1.0 on its held-out fold (``tests/int8_real_model.py`` says how)."""

from __future__ import annotations

import pytest

from tests import int8_real_model
from tests.conftest import requires_shared

frozen_fold = int8_real_model.frozen_fold


@pytest.mark.slow
@requires_shared
def test_onnx_int8_export_of_the_frozen_mobilenet_on_its_held_out_fold(tmp_path, frozen_fold) -> None:
    int8_real_model.check_int8_export("onnx", tmp_path, frozen_fold)
