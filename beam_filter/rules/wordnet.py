"""DataComp's text_based rule: does a caption name an ImageNet-21k concept?

DataComp (baselines/apply_filter.py, ``does_contain_text_entity``) keeps a
caption when, for some word of ``caption.split()``, the FIRST synset that
``nltk.corpus.wordnet.synsets(word)`` returns (nltk 3.8.1, WordNet 3.0) has an
offset in the ImageNet-21k synset list. Only the offset is compared, whatever
the part of speech of that synset (a verb whose offset equals a listed noun
offset also matches) -- reproduced here as published.

Why not call nltk: the rule needs only the *index* files (lemma -> synset
offsets) and the morphology exception lists, not the 30 MB data files; reading
them directly takes ~1 s once per worker, adds no dependency, and avoids nltk
3.9+'s path sandbox. ``first_synset_offset`` follows nltk 3.8.1's ``synsets``
exactly: lowercase; parts of speech in the order noun, verb, adjective, adverb;
for each, ``_morphy`` (exception list first, else the word and its rule-based
detachments, applied repeatedly until a lemma is found); offsets in index-file
order. tests/unit/test_rules.py checks this against nltk when nltk is installed.

WordNet 3.0 database files are looked up in: the ``wordnet_dir`` argument, the
``BEAM_FILTER_WORDNET_DIR`` environment variable, Debian/Ubuntu's package
``wordnet-base`` (/usr/share/wordnet), and nltk_data ``corpora/wordnet``
directories or ``wordnet.zip`` files. Offsets differ between WordNet versions,
so a database that is not 3.0 is refused.

The ImageNet-21k list (``data/imagenet21k_wordnet_ids.txt``, 21,843 ``nXXXXXXXX``
ids) is byte-identical to the ``imagenet21k_wordnet_ids.txt`` DataComp downloads
(sha256 66362bde...f2); the same file ships in timm as
``imagenet21k_goog_synsets.txt``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from importlib import resources

from beam_filter.errors import UserError
from beam_filter.process_cache import once_per_process

IN21K_FILE = "imagenet21k_wordnet_ids.txt"
IN21K_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"

_POS_ORDER = ("n", "v", "a", "r")          # nltk POS_LIST
_SUFFIX = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# nltk's MORPHOLOGICAL_SUBSTITUTIONS (WordNet's morphy detachment rules), in order.
_DETACH = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
          ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_SEARCH_DIRS = (
    "/usr/share/wordnet",                       # Debian/Ubuntu: apt-get install wordnet-base
    "~/nltk_data/corpora/wordnet", "~/nltk_data/corpora/wordnet.zip",
    "/usr/share/nltk_data/corpora/wordnet", "/usr/share/nltk_data/corpora/wordnet.zip",
    "/usr/local/share/nltk_data/corpora/wordnet", "/usr/local/share/nltk_data/corpora/wordnet.zip",
    "/usr/lib/nltk_data/corpora/wordnet", "/usr/local/lib/nltk_data/corpora/wordnet",
)


class WordNetIndex:
    """Lemma -> synset offsets per part of speech, plus morphy exceptions (WordNet 3.0)."""

    def __init__(self, read_file):
        """``read_file(name) -> str`` returns the text of a database file (index.noun ...)."""
        self.offsets: dict[str, dict[str, list[int]]] = {p: {} for p in _POS_ORDER}
        self.exceptions: dict[str, dict[str, list[str]]] = {p: {} for p in _POS_ORDER}
        header = read_file("index.noun")[:3000]
        if "WordNet 3.0" not in header:
            raise UserError("the WordNet database found is not WordNet 3.0; DataComp's "
                            "text_based rule compares WordNet 3.0 synset offsets")
        for pos in _POS_ORDER:
            table = self.offsets[pos]
            for line in read_file(f"index.{_SUFFIX[pos]}").splitlines():
                if not line or line.startswith(" "):
                    continue            # license header
                f = line.split()
                n_synsets, n_pointers = int(f[2]), int(f[3])
                start = 4 + n_pointers + 2          # skip pointers, sense_cnt, tagsense_cnt
                table[f[0]] = [int(x) for x in f[start:start + n_synsets]]
            exc = self.exceptions[pos]
            for line in read_file(f"{_SUFFIX[pos]}.exc").splitlines():
                terms = line.split()
                if terms:
                    exc[terms[0]] = terms[1:]

    def _morphy(self, form: str, pos: str) -> list[str]:
        table = self.offsets[pos]

        def known(forms):
            out, seen = [], set()
            for f in forms:
                if f in table and f not in seen:
                    out.append(f)
                    seen.add(f)
            return out

        if form in self.exceptions[pos]:
            return known([form] + self.exceptions[pos][form])
        rules = _DETACH[pos]

        def detach(forms):
            return [f[:-len(old)] + new for f in forms for old, new in rules if f.endswith(old)]

        forms = detach([form])
        found = known([form] + forms)
        while not found and forms:
            forms = detach(forms)
            found = known(forms)
        return found

    def synset_offsets(self, word: str) -> list[int]:
        """Offsets of ``nltk.corpus.wordnet.synsets(word)``, in nltk's order."""
        word = word.lower()
        return [off for pos in _POS_ORDER for form in self._morphy(word, pos)
                for off in self.offsets[pos][form]]

    def first_synset_offset(self, word: str) -> int | None:
        """Offset of ``synsets(word)[0]`` (the most likely sense), or None."""
        word = word.lower()
        for pos in _POS_ORDER:
            for form in self._morphy(word, pos):
                offs = self.offsets[pos][form]
                if offs:
                    return offs[0]
        return None


def find_wordnet_dir(wordnet_dir: str | None = None) -> str:
    """The WordNet 3.0 database to use (a directory or an nltk ``wordnet.zip``)."""
    candidates = [wordnet_dir] if wordnet_dir else (
        [os.environ["BEAM_FILTER_WORDNET_DIR"]] if os.environ.get("BEAM_FILTER_WORDNET_DIR")
        else list(_SEARCH_DIRS))
    for c in candidates:
        path = os.path.expanduser(c)
        if os.path.isfile(os.path.join(path, "index.noun")) or (
                path.endswith(".zip") and os.path.isfile(path)):
            return path
    raise UserError(
        "no WordNet 3.0 database found (needed by the text_based rule): install it with "
        "`apt-get install wordnet-base` (Debian/Ubuntu), or nltk.download('wordnet'), or set "
        "BEAM_FILTER_WORDNET_DIR / wordnet_dir to a directory holding index.noun, noun.exc, ..."
        + (f" (looked in {wordnet_dir})" if wordnet_dir else ""))


def load_wordnet(wordnet_dir: str | None = None) -> WordNetIndex:
    """The WordNet index at ``wordnet_dir`` (found by ``find_wordnet_dir``), loaded once per process."""
    path = find_wordnet_dir(wordnet_dir)
    return once_per_process("wordnet", path, lambda: WordNetIndex(_file_reader(path)))


def _file_reader(path: str):
    if path.endswith(".zip"):
        archive = zipfile.ZipFile(path)
        names = {os.path.basename(n): n for n in archive.namelist()}

        def read(name: str) -> str:
            if name not in names:
                raise UserError(f"{path}: {name} missing from the WordNet archive")
            return archive.read(names[name]).decode("utf-8")
        return read

    def read(name: str) -> str:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise UserError(f"cannot read WordNet file {name} in {path}: {e}") from None
    return read


@functools.lru_cache(maxsize=1)
def in21k_synset_offsets() -> frozenset[int]:
    """The ImageNet-21k synset offsets (``int(wnid[1:])``), as DataComp builds its entity set."""
    data = resources.files("beam_filter.rules").joinpath("data", IN21K_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != IN21K_SHA256:
        raise UserError(f"beam_filter/rules/data/{IN21K_FILE} is damaged (checksum mismatch)")
    return frozenset(int(line.strip()[1:]) for line in data.decode("ascii").splitlines()
                     if line.strip())


def caption_has_in21k_synset(text: str | None, wordnet_dir: str | None = None) -> bool:
    """DataComp text_based: some word's first WordNet synset is an ImageNet-21k synset."""
    index = load_wordnet(wordnet_dir)
    targets = in21k_synset_offsets()
    for word in (text or "").split():
        off = index.first_synset_offset(word)
        if off is not None and off in targets:
            return True
    return False
