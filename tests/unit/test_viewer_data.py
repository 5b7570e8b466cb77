"""The viewer page's data helpers (api/static/viewer-data.js), tested on their own under Node's test runner."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def test_the_viewer_data_helpers_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js for `node --test`; the browser tests still exercise the helpers through the page")
    # when
    done = subprocess.run([node, "--test", "tests/unit/viewer_data.test.mjs"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    # then every case passed (a failing case names itself in the output)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 9" in done.stdout
