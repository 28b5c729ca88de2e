"""What the tests of the person-input routes share (test_inputs.py, routes/test_batch.py,
routes/test_prepare.py): their server. A module that needs other settings defines its own ``server``."""
from __future__ import annotations

import pytest

from tests.fixtures.service.harness import running_server
from tests.utils.front_person import MAX_GARMENTS


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    # Chunks of two garments, so a batch of three shows how a chunk's parts travel together.
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "2",
                         "TRYON_GARMENT_CHUNK": "2", "TRYON_MAX_GARMENTS": str(MAX_GARMENTS)},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc
