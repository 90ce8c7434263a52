"""ReadDataCompMetadata: a DataComp metadata directory as select-phase rows (Beam wiring only).

The reading itself (parquet record batches, npz arrays streamed row range by
row range) is ``datacomp_metadata.iter_metadata_rows``, free of Beam so the
fused select path (``shard_work.select_part``) runs it in a local process pool.
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam

from beam_filter.datacomp_metadata import iter_metadata_rows, list_metadata_files


class _ReadPart(beam.DoFn):
    def __init__(self, embeddings):
        self.embeddings = embeddings

    def process(self, pair):
        parquet, npz = pair
        yield from iter_metadata_rows(parquet, npz, self.embeddings if npz else None)


class ReadDataCompMetadata(beam.PTransform):
    """DataComp metadata directory -> rows (see ``datacomp_metadata``).

    Files are matched at construction (a missing directory or no parquet is a
    UserError right away), spread with a Reshuffle, and each parquet + npz pair
    is streamed by one worker. ``embeddings`` restricts the npz arrays attached
    (fewer arrays = less memory per row: the four are ~5 KB a row as float32).
    """

    def __init__(self, directory: str, embeddings: Sequence[str] | None = None):
        super().__init__()
        self.directory = directory
        self.embeddings = list(embeddings) if embeddings is not None else None
        self.pairs = list_metadata_files(directory)

    def expand(self, p):
        return (p
                | "ListParts" >> beam.Create(self.pairs)
                | "SpreadParts" >> beam.Reshuffle()
                | "ReadParts" >> beam.ParDo(_ReadPart(self.embeddings)))
