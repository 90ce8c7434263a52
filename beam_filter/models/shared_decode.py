"""One image decode for consecutive image model stages (CLIP, BLIP ITM, ...) of a recipe.

Why: each model stage's handler receives the sample's encoded bytes and decodes them itself,
so "The Devil is in the Details" (flipped CLIP, then BLIP ITM) decoded every image twice.
Handing decoded pixels from one RunInference to the next would put ~0.4-1 MB per sample on
the score phase's channel where the JPEG is ~50 kB (design rule 1), so instead the stages
that opt in (``ScoredStage.shares_decode()``) and follow each other in the recipe run as ONE
model step: :class:`DecodeGroup` looks like one model stage to both runners
(``shard_work.apply_models`` on the local path, ``transforms/score.RunModelStages`` with one
RunInference on the graph / Dataflow path), and its handler :class:`SharedDecodeModelHandler`
holds the members' models.

Per image the group decodes once (``image_prep.decode_for``) at the largest need of its
members (``image_prep.merge_specs``: full size when any member decodes at full size, else
JPEG draft at the largest member size), then each member cuts its own views from that
image (``runner.views(img)``, e.g. CLIP's 224-px centre crop and mirror, BLIP's 384-px
squash) in the same decode thread, so only ``threads`` decoded images are alive at a time.
A member whose own decode is that merged decode (all members at full size: the defaults of
``clip`` and ``blip_itm``) gets exactly the pixels it computed alone; a member with
``draft`` whose partner needs more gets the pixels of a decode at the larger size.

Members then run one after the other on the batch, each in its own batch size (the group's
batch is the largest; a member chunks it), and each only on the elements still alive
before it, as between separate model stages: an element leaves the group at its first
member whose input could not be built (``feature_error:<stage>``) or whose output has an
``error`` (``corrupt_image``, ``image_too_large``: every member sees the same decode
error, and the first member's is the one recorded, as before). So a recipe's reasons and
the batches each model sees are the same as without sharing.

A member runner (what a member handler's ``load_model`` returns) provides three methods:
``decode_spec() -> image_prep.DecodeSpec``, ``views(img)`` (the per-image preparation from a
decoded PIL image, run in a decode thread) and ``infer_views(examples, views, errors)`` (its
``infer`` after preparation; ``views[i]`` is None where ``errors[i]`` names a reason).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler

from beam_filter.models.image_prep import decode_error, decode_for, default_threads, merge_specs

_log = logging.getLogger(__name__)


def plan(stages) -> list:
    """Model stages in recipe order, runs of two or more consecutive stages that declare
    ``shares_decode()`` replaced by one :class:`DecodeGroup` (a single one stays itself, so a
    recipe with one image model runs exactly as before)."""
    out, run = [], []

    def close():
        if len(run) > 1:
            out.append(DecodeGroup(run))
        else:
            out.extend(run)
        run.clear()

    for stage in stages:
        if not _shares(stage):
            close()
            out.append(stage)
            continue
        if _reads_from(stage, run):
            close()
        run.append(stage)
    close()
    return out


def _shares(stage) -> bool:
    f = getattr(stage, "shares_decode", None)
    return bool(f()) if callable(f) else False


def _reads_from(stage, run) -> bool:
    """Whether ``stage`` declares it reads a column a member of ``run`` makes: members run on one
    batch before any output is merged, so such a stage starts a new run (safety net beside
    each stage's own ``shares_decode``)."""
    made = {c for member in run for c in member.produced_columns()}
    return any(c in made for n in stage.needs() for c in n.columns)


class DecodeGroup:
    """Consecutive model stages sharing one decode; one model step to the runners (module docstring)."""

    def __init__(self, stages):
        self.stages = list(stages)
        self.id = "+".join(s.id for s in self.stages)

    def model_handler(self) -> "SharedDecodeModelHandler":
        return SharedDecodeModelHandler([s.model_handler() for s in self.stages])

    def model_input(self, sample) -> tuple:
        """``(image bytes, member inputs, failed)``: the members' inputs in order up to the first
        that cannot be built (``failed``: its index, else -1; the rest None). Never raises: the
        failure is applied when the outputs are merged, after the members before it."""
        inputs: list = [None] * len(self.stages)
        failed = -1
        for j, stage in enumerate(self.stages):
            try:
                inputs[j] = stage.model_input(sample)
            except Exception as e:  # noqa: BLE001 - one bad record never fails the job
                _log.warning("stage %s: model input failed for %s/%s: %s: %s",
                             stage.id, sample.shard, sample.key, type(e).__name__, e)
                failed = j
                break
        return (sample.image, tuple(inputs), failed)

    def merge_group_output(self, sample, output: tuple, merge_one, fail_one):
        """Merge the group's ``output`` (``(member outputs, failed)``, :meth:`SharedDecodeRunner.infer`)
        into ``sample`` member by member, stopping where separate stages would have: at the first
        sample error. ``merge_one(stage, sample, result) -> sample`` and ``fail_one(stage, sample)
        -> sample`` (its input failed) are the runner's own per-stage steps."""
        results, failed = output
        for j, stage in enumerate(self.stages):
            if sample.error is not None:
                break
            if j == failed:
                sample = fail_one(stage, sample)
                break
            sample = merge_one(stage, sample, results[j])
        return sample


class SharedDecodeRunner:
    """The members' loaded models and one decode thread pool: ``infer(elements)`` -> per element
    ``(member outputs, failed)``: the outputs (None where a member did not run) and the element's
    ``failed`` index (:meth:`DecodeGroup.model_input`), so the merge needs only the output."""

    def __init__(self, runners: Sequence, batch_sizes: Sequence[int], threads: int | None = None):
        self.runners = list(runners)
        self.batch_sizes = [max(1, int(b)) for b in batch_sizes]
        self.spec = merge_specs(r.decode_spec() for r in self.runners)
        self.threads = threads or default_threads()
        self._pool = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shared-decode")
            return self._pool

    def _prepare(self, element) -> tuple[list, list]:
        """One decode, then every member's views of it: (views per member, errors per member)."""
        data, inputs = element[0], element[1]
        m = len(self.runners)
        wanted = [j for j in range(m) if inputs[j] is not None]
        views, errors = [None] * m, [None] * m
        if not wanted:
            return views, errors
        try:
            img = decode_for(bytes(data) if data is not None else b"", self.spec)
        except Exception as e:  # untrusted bytes: any decoder failure is a reason, never a crash
            reason = decode_error(e)
            return views, [reason] * m
        for j in wanted:
            try:
                views[j] = self.runners[j].views(img)
            except Exception as e:  # noqa: BLE001 - as each model's own preparation would
                errors[j] = decode_error(e)
        return views, errors

    def infer(self, elements: Sequence) -> list[tuple]:
        n, m = len(elements), len(self.runners)
        if self.threads > 1 and n > 1:
            prepared = list(self._executor().map(self._prepare, elements))
        else:
            prepared = [self._prepare(e) for e in elements]
        out: list[list] = [[None] * m for _ in range(n)]
        alive = [True] * n
        for j, runner in enumerate(self.runners):
            idx = [i for i in range(n) if alive[i] and elements[i][1][j] is not None]
            size = self.batch_sizes[j]
            for k in range(0, len(idx), size):
                chunk = idx[k:k + size]
                results = list(runner.infer_views([elements[i][1][j] for i in chunk],
                                                  [prepared[i][0][j] for i in chunk],
                                                  [prepared[i][1][j] for i in chunk]))
                for i, result in zip(chunk, results):
                    out[i][j] = result
                    inner = getattr(result, "inference", result)
                    if isinstance(inner, dict) and inner.get("error"):
                        alive[i] = False     # as sample.error between separate stages
            for i in range(n):
                if elements[i][1][j] is None:
                    alive[i] = False         # its input failed here: later members never run
        return [(out[i], elements[i][2]) for i in range(n)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _max_batch(handler) -> int:
    kwargs = handler.batch_elements_kwargs() or {}
    return max(1, int(kwargs.get("max_batch_size") or 64))


class SharedDecodeModelHandler(ModelHandler):
    """Beam ModelHandler of a :class:`DecodeGroup`: ``(image bytes, member inputs)`` -> member outputs.

    Batches are the largest member's batch size (each member chunks them into its own);
    the model is shared across processes when any member asks for that (Beam's proxy then
    calls :meth:`SharedDecodeRunner.infer`, as it calls a single runner's ``infer``).
    """

    def __init__(self, handlers: Sequence[ModelHandler], batch_size: int | None = None):
        self.handlers = list(handlers)
        self.batch_sizes = [_max_batch(h) for h in self.handlers]
        size = int(batch_size) if batch_size else max(self.batch_sizes)
        share = any(_shares_processes(h) for h in self.handlers)
        copies = max((_copies(h) for h in self.handlers), default=1)
        super().__init__(min_batch_size=size, max_batch_size=size, large_model=share,
                         model_copies=copies if share else None)

    def load_model(self) -> SharedDecodeRunner:
        return SharedDecodeRunner([h.load_model() for h in self.handlers], self.batch_sizes)

    def run_inference(self, batch: Sequence, model: SharedDecodeRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[tuple]:
        return model.infer(list(batch))

    def get_num_bytes(self, batch) -> int:
        return sum(len(e[0] or b"") for e in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterSharedDecode"

    def share_model_across_processes(self) -> bool:
        return self._share_across_processes

    def model_copies(self) -> int:
        return self._model_copies or 1


def _shares_processes(handler) -> bool:
    try:
        return bool(handler.share_model_across_processes())
    except Exception:  # noqa: BLE001 - a handler without the hook shares nothing
        return False


def _copies(handler) -> int:
    try:
        return int(handler.model_copies() or 1)
    except Exception:  # noqa: BLE001
        return 1
