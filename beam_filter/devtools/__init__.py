"""Developer tools: data and models made up for offline demos, tests and benchmarks.

Nothing here curates data, and nothing the production pipeline runs imports this
package (``pipeline``, ``stages``, ``transforms``, ``models``, ``rules``, ... never do);
only the developer commands of ``beam-filter`` (``make-sample``, ``make-test-models``),
``tests/``, ``benchmarks/`` and ``scripts/`` use it.

* :mod:`beam_filter.devtools.sample_pool` -- ``beam-filter make-sample``: a small,
  deterministic img2dataset/DataComp pool with a ``ground_truth.json`` of what every
  sample is (captions from ``sample_data/``, which ships with this package).
* :mod:`beam_filter.devtools.synthetic_metadata` -- ``write_synthetic_metadata``:
  DataComp-format metadata (parquet + npz) for the ``select --metadata`` path.
* :mod:`beam_filter.devtools.tiny_models` -- ``write_tiny_clip``, ``write_tiny_mlm``: tiny
  randomly initialised twins of the real model architectures, what ``make-test-models``
  writes and ``--test-models`` loads, so every preset runs end to end without a model hub.
"""
