"""``build-centroids --distributed``: DataComp's image_based_clustering.py as a Beam graph.

The logic is ``beam_filter/build_centroids.py``'s (the same functions the one-machine
command calls, so both give the same centroids); this module only wires it:

    parts --Reshuffle--> SamplePart (one part per call: read, caption filter, sampling rule)
          --> (0, (part index, sample)) --GroupByKey--> Train (one worker: stack in part order,
          faiss k-means, write the file) --> the output path
    parts --Reshuffle--> AssignPart (optional; side input: the written path; each worker loads
          the centroids once and writes one parquet per part)

What crosses the network is each part's *sample* (its sampled embeddings, float32), never
its rows; the gather holds the whole training sample on one worker, the memory bound of the
command (build_centroids.py says how large). Counters (``COUNTERS``) report the embeddings
trained on, their dimension, and the rows assigned.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton

from beam_filter.build_centroids import (Part, Sampling, assign_part, assign_path, part_sample,
                                         save_centroids, stack_samples, train_kmeans, write_assignment)

NAMESPACE = "beam_filter.build_centroids"
COUNTERS = ("embeddings", "dim", "parts_sampled", "assigned")


class _SamplePart(beam.DoFn):
    def __init__(self, sampling: Sampling):
        self.sampling = sampling

    def process(self, part: Part):
        sample = part_sample(part, self.sampling)
        Metrics.counter(NAMESPACE, "parts_sampled").inc()
        yield 0, (part.index, sample)        # one key: every sample goes to the training worker


class _Train(beam.DoFn):
    def __init__(self, output: str, num_clusters: int, seed: int, niter: int):
        self.output, self.num_clusters, self.seed, self.niter = output, num_clusters, seed, niter

    def process(self, keyed):
        _, samples = keyed
        emb = stack_samples(samples)
        cents = train_kmeans(emb, self.num_clusters, self.seed, self.niter)
        save_centroids(self.output, cents)
        Metrics.counter(NAMESPACE, "embeddings").inc(len(emb))
        Metrics.counter(NAMESPACE, "dim").inc(emb.shape[1])
        yield self.output


class _AssignPart(beam.DoFn):
    """Each part's nearest centroids; the centroids are read once per DoFn instance (worker)."""

    def __init__(self, assign_dir: str, sampling: Sampling):
        self.assign_dir, self.sampling = assign_dir, sampling
        self._index = None

    def process(self, part: Part, centroids_path: str):
        if self._index is None:
            from beam_filter.cluster.centroids import CentroidIndex, load_centroids_file

            self._index = CentroidIndex(load_centroids_file(centroids_path))
        n = write_assignment(assign_path(self.assign_dir, part), assign_part(part, self._index, self.sampling))
        Metrics.counter(NAMESPACE, "assigned").inc(n)
        yield part.index, n


class BuildCentroids(beam.PTransform):
    """PBegin -> the centroids file written (a PCollection holding its path); see the module docstring."""

    def __init__(self, parts: list[Part], output: str, sampling: Sampling, *, num_clusters: int, seed: int,
                 niter: int, assign_dir: str | None = None):
        super().__init__()
        self.parts, self.output, self.sampling = list(parts), output, sampling
        self.num_clusters, self.seed, self.niter, self.assign_dir = num_clusters, seed, niter, assign_dir

    def expand(self, pbegin):
        parts = (pbegin | "ListParts" >> beam.Create(self.parts)
                 | "SpreadParts" >> beam.Reshuffle())      # one part per worker call, not all on one
        written = (parts
                   | "SamplePart" >> beam.ParDo(_SamplePart(self.sampling))
                   | "GatherSample" >> beam.GroupByKey()
                   | "Train" >> beam.ParDo(_Train(self.output, self.num_clusters, self.seed, self.niter)))
        if self.assign_dir:
            _ = parts | "AssignPart" >> beam.ParDo(_AssignPart(self.assign_dir, self.sampling),
                                                   centroids_path=AsSingleton(written))
        return written
