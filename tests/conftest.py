import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import their builders as a plain module


def pytest_addoption(parser):
    parser.addini("report_slower_than", "name each test that runs longer than this many seconds, with its "
                  "time, as it ends (0: none)", default="0")


def pytest_configure(config):
    config.pluginmanager.register(SlowTestLines(config), "onnx-cp-slow-test-lines")


class SlowTestLines:
    """Progress on long runs: a line per slow test among pytest's dots, rather than minutes of dots alone."""

    def __init__(self, config):
        self.config = config
        self.limit = float(config.getini("report_slower_than"))

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report):
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if report.when == "call" and 0 < self.limit < report.duration and reporter is not None:
            if reporter.verbosity <= 0:  # after the test's dot; -v ends its own line
                reporter.write("\n")
            reporter.write_line(f"{report.nodeid} took {report.duration:.1f} s")
