"""The settings' rules that derive one value from others (service/settings.py)."""
from __future__ import annotations

from service.settings import Settings


def test_garment_chunk_setting():
    auto = Settings(max_batch_size=8)
    assert (auto.garment_chunk_for("cuda"), auto.garment_chunk_for("cpu")) == (8, 1)
    assert Settings(max_batch_size=1).garment_chunk_for("cpu") == 1
    assert Settings(max_batch_size=4, garment_chunk=3).garment_chunk_for("cuda") == 3
    assert Settings(max_batch_size=4, garment_chunk=16).garment_chunk_for("cpu") == 4
