"""A pytest plugin for bench.gpu_check's test step: one JSON line per test as it ends.

    python -m pytest -p bench.pytest_progress --progress-jsonl=tests.jsonl ...

A junit XML is written only when the session ends, so a step killed at its time limit loses it;
these lines are on disk test by test. Under pytest-xdist only the controller writes (it sees
every worker's reports). A file that fails to collect is a line too (outcome
"collection_error"), and with ``--continue-on-collection-errors`` it does not stop the others.
"""
from __future__ import annotations

import json


def pytest_addoption(parser):
    parser.addoption("--progress-jsonl", default=None, help="append one JSON line per finished test here")


def pytest_configure(config):
    path = config.getoption("progress_jsonl")
    if path and not hasattr(config, "workerinput"):  # an xdist worker: its controller writes
        config.pluginmanager.register(ProgressLines(path), "progress-lines")


class ProgressLines:
    def __init__(self, path: str):
        self.path = path

    def _write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def pytest_collectreport(self, report):
        if report.failed:
            self._write({"nodeid": report.nodeid, "outcome": "collection_error",
                         "error": str(report.longrepr).strip().splitlines()[-1][:300]})

    def pytest_runtest_logreport(self, report):
        # One line per test: its call, or the setup or teardown that failed or skipped it.
        failed_around = report.when != "call" and report.outcome == "failed"
        if report.when == "call" or failed_around or (report.when == "setup" and report.skipped):
            self._write({"nodeid": report.nodeid, "outcome": "error" if failed_around else report.outcome,
                         "seconds": round(report.duration, 3)})
