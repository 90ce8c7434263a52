"""Language identification, as the DataComp and LAION baselines do it.

fastText ``lid.176`` (DataComp basic/text/image-based filters): newlines become
spaces, the top-1 label without ``__label__`` is the language, and there is no
probability threshold. The default model is the quantised ``lid.176.ftz``
bundled in this package (``rules/data``, see its README for source and licence),
so nothing is downloaded at run time; ``model_path`` selects ``lid.176.bin``
(DataComp's exact model) or any other fastText model, local or remote (copied
once via ``models.base.local_copy``). The ``fasttext`` module comes from the
``fasttext-numpy2`` wheel: fastText's own bindings, built for numpy 2, as fast as
the fasttext 0.9.3 DataComp builds from source and about 25% faster than
``fasttext-predict``'s wheel on the same captions.

gcld3 (LAION-2B reproduction): ``NNetLanguageIdentifier(min_num_bytes=0,
max_num_bytes=1000)``, newlines become spaces, label ``en`` is English. Its
binding only builds where protobuf headers exist, so it is imported lazily and a
missing module is a clear :class:`UserError`.

Models load lazily, once per process, into a module cache keyed by path: Beam
workers call these functions per element, and a reload per call would cost
~100 ms each time. Nothing loads at import or pipeline-construction time.
"""

from __future__ import annotations

import os
import re
import threading

from beam_filter.errors import UserError
from beam_filter.process_cache import once_per_process

_CLD3_CALL_LOCK = threading.Lock()   # gcld3 keeps per-call state in the identifier

# fastText's Dictionary::readWord splits on these bytes; a '\n' also yields the
# end-of-sentence token "</s>" (fastText src/dictionary.cc).
_FASTTEXT_TOKEN = re.compile(r"[^ \n\r\t\v\f\x00]+|\n")
FASTTEXT_EOS = "</s>"


def bundled_lid_model_path() -> str:
    """Path of the ``lid.176.ftz`` bundled in beam_filter (``rules/data/lid.176.ftz``)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lid.176.ftz")
    if not os.path.exists(path):
        raise UserError(f"lid.176.ftz is missing from this beam_filter install ({path}); reinstall "
                        "beam_filter or pass a fastText language-id model path")
    return path


def load_fasttext_model(model_path: str | None = None):
    """The fastText model at ``model_path`` (default: bundled lid.176.ftz), loaded once per process."""
    def load():
        try:
            import fasttext
        except ModuleNotFoundError:
            raise UserError("the fasttext module is missing (pip install fasttext-numpy2)") from None
        if model_path:
            from beam_filter.models.base import local_copy

            local = local_copy(model_path)
        else:
            local = bundled_lid_model_path()
        try:
            return fasttext.load_model(local)
        except ValueError as e:
            raise UserError(f"cannot load fastText model {model_path or local}: {e}") from None

    return once_per_process("fasttext", model_path or "", load)


def _clean(text: str | None) -> str:
    """DataComp's preprocessing (newlines -> spaces), plus safety for odd strings.

    Lone surrogates cannot be passed to the C++ side (UTF-8 encoding fails), so
    they are replaced rather than crashing a worker.
    """
    text = (text or "").replace("\n", " ")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def detect_language(text: str | None, model_path: str | None = None) -> tuple[str, float]:
    """Top-1 fastText language of ``text``: (label without ``__label__``, probability)."""
    model = load_fasttext_model(model_path)
    labels, probs = model.predict(_clean(text), k=1)
    if not labels:
        return "", 0.0
    return labels[0].replace("__label__", "", 1), float(probs[0])


def detect_language_labels(texts, model_path: str | None = None) -> list[str]:
    """The labels of :func:`detect_language` for many texts in one batched fastText call: the same
    top-1 labels without a Python round trip per caption (columnar select): the binding's
    ``multilinePredict`` is called directly (fastText's own bindings return labels and
    probabilities, fasttext-predict's labels only); a build without it answers caption by caption."""
    lines = [_clean(t) + "\n" for t in texts]
    return _predict_labels(lines, model_path) or [detect_language(t, model_path)[0] for t in texts]


def detect_language_labels_arrow(column, model_path: str | None = None) -> list[str]:
    """:func:`detect_language_labels` of an Arrow string column (a null is ""), the captions cleaned
    by Arrow kernels instead of a Python call per caption: a 50k-row part's text never becomes Python
    strings but once, as the lines fastText reads. Arrow strings are valid UTF-8, so the
    lone-surrogate repair of :func:`_clean` has nothing to do."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pc.fill_null(column, ""), pa.large_string())
    newline, nothing = pa.scalar("\n", pa.large_string()), pa.scalar("", pa.large_string())
    lines = pc.binary_join_element_wise(pc.replace_substring(text, "\n", " "), newline, nothing).to_pylist()
    return _predict_labels(lines, model_path) or detect_language_labels(text.to_pylist(), model_path)


def _predict_labels(lines: list[str], model_path: str | None) -> list[str] | None:
    """Top-1 labels of newline-terminated ``lines`` in one ``multilinePredict`` call, without the
    ``__label__`` prefix (stripped once per distinct label); None when this fastText build has no
    batched call (the caller then asks caption by caption)."""
    model = load_fasttext_model(model_path)
    try:
        labels = model.f.multilinePredict(lines, 1, 0.0, "strict")
    except (AttributeError, TypeError, ValueError):
        labels = None
    if isinstance(labels, tuple):       # the official bindings: (labels, probabilities)
        labels = labels[0]
    if labels is None or len(labels) != len(lines):
        return None
    firsts = [lab[0] if len(lab) else "" for lab in labels]
    names = {lab: lab.replace("__label__", "", 1) for lab in set(firsts)}
    return list(map(names.__getitem__, firsts))


def fasttext_tokenize(text: str | None) -> list[str]:
    """Tokens exactly as ``fasttext.tokenize`` returns them (each '\\n' adds ``</s>``)."""
    return [FASTTEXT_EOS if m == "\n" else m for m in _FASTTEXT_TOKEN.findall(text or "")]


def fasttext_token_count(text: str | None) -> int:
    """``len(fasttext.tokenize(text))``: the word count of DataComp's image_based pre-filter.

    It differs from ``caption_words`` (``str.split``): only ASCII space, \\t, \\n,
    \\r, \\v, \\f and NUL separate words (not e.g. U+00A0 or U+3000), and each
    newline counts as one extra token.
    """
    return len(fasttext_tokenize(text))


def load_cld3_model(min_num_bytes: int = 0, max_num_bytes: int = 1000):
    """gcld3's NNetLanguageIdentifier, built once per process and byte limits."""
    def load():
        try:
            import gcld3
        except ModuleNotFoundError:
            raise UserError("gcld3 is not installed (pip install gcld3; building "
                            "it needs protobuf-compiler and libprotobuf-dev)") from None
        return gcld3.NNetLanguageIdentifier(min_num_bytes=min_num_bytes, max_num_bytes=max_num_bytes)

    return once_per_process("gcld3", (min_num_bytes, max_num_bytes), load)


def detect_language_cld3(text: str | None, min_num_bytes: int = 0,
                         max_num_bytes: int = 1000) -> tuple[str, float]:
    """gcld3 language of ``text`` (newlines -> spaces, as DataComp's laion2b baseline)."""
    model = load_cld3_model(min_num_bytes, max_num_bytes)
    with _CLD3_CALL_LOCK:
        result = model.FindLanguage(text=_clean(text))
    return result.language, float(result.probability)


def language_reason(lang: str | None, score: float | None, keep: frozenset[str],
                    min_score: float | None = None) -> str | None:
    """The ``language`` stage's rule: the label must be one of ``keep`` (``not_english`` when
    ``keep`` is just English, else ``wrong_language``), and its probability >= ``min_score``
    when one is given (``language_score_too_low``; a missing score fails)."""
    if lang not in keep:
        return "not_english" if keep == {"en"} else "wrong_language"
    if min_score is not None and (score is None or score < min_score):
        return "language_score_too_low"
    return None
