"""nbchat's JupyterLab extension (the renderer of a widget's saved conversation) is built from the sources as
they are, and ``pip install -e .`` puts that build where JupyterLab and Notebook 7 load it.

What it draws is tested in a real JupyterLab and Notebook 7 (``tests/e2e/test_transcript.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nbchat.bench.longpage import LABEXTENSION

ROOT = Path(__file__).resolve().parents[1]
WIDGET_BUNDLE = ROOT / "nbchat" / "notebook" / "static" / "widget.js"


def build(directory: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((directory / "package.json").read_text(encoding="utf-8"))
    return meta


def test_the_extension_was_built_from_the_sources_as_they_are() -> None:
    # build.sh builds both from the same sources; test_widget_bundle.py holds the widget's line to them
    built_from = (LABEXTENSION / "sources.txt").read_text(encoding="utf-8").strip()
    assert built_from == WIDGET_BUNDLE.read_text(encoding="utf-8").splitlines()[0], "run js/build.sh"
    meta = build(LABEXTENSION)
    assert meta["name"] == "nbchat" and meta["jupyterlab"]["mimeExtension"] == "lab.js", meta
    assert (LABEXTENSION / meta["jupyterlab"]["_build"]["load"]).is_file(), meta["jupyterlab"]["_build"]


def test_the_wheel_installs_the_extension_where_jupyter_looks() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.hatch.build.targets.wheel.shared-data]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^"nbchat/notebook/labextension" = "share/jupyter/labextensions/nbchat"$', section, re.M), section


@pytest.mark.slow
def test_pip_install_put_this_build_where_jupyterlab_loads_it() -> None:
    paths = pytest.importorskip("jupyter_core.paths", reason="needs Jupyter (pip install -e '.[lab]')")
    # where pip puts it (sys.prefix, or the user's directory), not a directory JUPYTER_PATH adds
    added = {Path(d) for d in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if d}
    candidates = [Path(d) / "nbchat" for d in paths.jupyter_path("labextensions") if Path(d).parent not in added]
    installed = next((c for c in candidates if (c / "package.json").exists()), None)
    if installed is None:
        pytest.skip("needs nbchat's JupyterLab extension installed (pip install -e .)")
    assert build(installed)["jupyterlab"]["_build"] == build(LABEXTENSION)["jupyterlab"]["_build"], (
        f"{installed} holds another build of the extension: run pip install -e . again")
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    listed = subprocess.run([sys.executable, "-m", "jupyterlab.labextensions", "list"], capture_output=True,
                            text=True, timeout=120, check=True, env=env)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    assert re.search(r"^\s+nbchat v\S+ enabled\s+OK", plain, re.M), plain
