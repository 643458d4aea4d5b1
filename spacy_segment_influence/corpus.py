"""Read and write the JSONL corpora used by the project.

Each line holds one sentence: `{"id": str, "tokens": [str], "ner_tags": [str]}`
with tags in one of three schemes (`SCHEMES`): BIO ("O", "B-LABEL", "I-LABEL"; IOB1's
stray "I-" starts an entity), BILUO (also "L-LABEL", "U-LABEL"), or IO ("O" and bare
labels, e.g. EBM-NLP's PICO spans: a maximal run of one label is one entity). The ids
travel into `doc.user_data["id"]` so that influence scores can always be traced back to
a line of the source file. CoNLL IOB files (`.iob`, `.txt`, `.conll`) are read by spaCy's
own `ner` converter.
"""

import json
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple

import spacy
import srsly
from spacy.tokens import Doc, DocBin, Span
from spacy.training.converters import conll_ner_to_docs
from spacy.vocab import Vocab

from .exceptions import BIORepairWarning, ConfigError, CorpusFormatError, CorpusNotFoundError, DataError
from .storage.atomic import write_atomic
from .tag_schemes import SCHEMES, RecordError, SpanTriple, check_tags, doc_to_bio, json_type, tags_to_spans

_PREFIX_RE = re.compile(r"^[BILU]-\S")
_WHITESPACE_RE = re.compile(r"\s")
_NO_SPACE_BEFORE = {",", ".", ")", "]", "}", ";", ":", "!", "?", "%", "'", "'s", "'S", "n't", "N'T"}
_NO_SPACE_AFTER = {"(", "[", "{"}
FORMATS = ("auto", "jsonl", "iob")
IOB_SUFFIXES = (".iob", ".txt", ".conll")
_DOCSTART_RE = re.compile(r"^-DOCSTART-.*$", re.MULTILINE)
_SPACY_DOCSTART = "-DOCSTART- -X- O O"  # the only form spaCy's converter splits on


def detect_scheme(path: Path) -> str:
    """The tag scheme of a JSONL corpus: "biluo" if any tag starts with L- or U-, "io"
    if the tags other than O have no B-/I-/L-/U- prefix, else "bio". A file with both
    (one "B_MISC" typo among BIO lines would otherwise turn "B-LOC" into a label) is
    refused with a CorpusFormatError naming the lines of the smaller side."""
    prefixed: List[int] = []
    bare: List[int] = []
    biluo = False
    for line_no, record in read_jsonl_records(Path(path)):
        tags = record.get("ner_tags")
        entity_tags = [t for t in tags if isinstance(t, str) and t != "O"] if isinstance(tags, list) else []
        if any(_PREFIX_RE.match(tag) for tag in entity_tags):
            prefixed.append(line_no)
            biluo = biluo or any(re.match(r"^[LU]-\S", tag) for tag in entity_tags)
        if any(not _PREFIX_RE.match(tag) for tag in entity_tags):
            bare.append(line_no)
    if prefixed and bare:
        odd, kind = (bare, "bare labels (IO)") if len(bare) <= len(prefixed) else (prefixed, "B-/I- prefixes")
        lines = ", ".join(map(str, odd[:5])) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise CorpusFormatError(
            f"{path}: mixed tag schemes: line(s) {lines} have {kind}, the other tagged lines do not; "
            "fix those lines or pass --scheme"
        )
    return "io" if bare else "biluo" if biluo else "bio"


def read_jsonl_docs(path: Path, vocab: Vocab, scheme: str = "bio") -> Iterator[Doc]:
    """Yield one Doc per non-blank line, with entities and `user_data["id"]` set.

    `scheme`: "bio", "biluo" or "io" (module docstring). In BIO, a stray "I-X" (after
    "O" or after another type) starts a new entity, as in IOB1. Once the whole file
    has been read, the number of such repairs is reported with a single
    BIORepairWarning. Raises CorpusFormatError on the first malformed line.
    """
    path = Path(path)
    if scheme not in SCHEMES:
        raise ConfigError(f"Unknown tag scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    n_repairs = 0
    first_repair_line = 0
    id_lines: Dict[str, int] = {}
    for line_no, line in _lines(path):
        try:
            record_id, tokens, tags = _parse_record(line, scheme)
            spans, repairs = tags_to_spans(tags, scheme)
            if record_id in id_lines:
                raise RecordError(f"id {record_id!r} repeats line {id_lines[record_id]}; ids must be unique")
        except RecordError as err:
            raise CorpusFormatError(f"{path}:{line_no}: {err}") from None
        id_lines[record_id] = line_no
        if repairs and not n_repairs:
            first_repair_line = line_no
        n_repairs += repairs
        yield _make_doc(vocab, record_id, tokens, spans)
    if n_repairs:
        warnings.warn(
            f"{path}: {n_repairs} stray I- tag(s) read as entity starts (first on line {first_repair_line})",
            BIORepairWarning,
            stacklevel=2,
        )


def corpus_format(path: Path, file_format: str = "auto") -> str:
    """ "jsonl" or "iob": `file_format`, or with "auto" the one `path`'s suffix names."""
    if file_format not in FORMATS:
        raise ConfigError(f"Unknown corpus format {file_format!r}: use one of {', '.join(FORMATS)}")
    if file_format != "auto":
        return file_format
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix in IOB_SUFFIXES:
        return "iob"
    raise ConfigError(
        f"{path}: cannot tell the format from the suffix {path.suffix!r} "
        f"(.jsonl, or {' '.join(IOB_SUFFIXES)} for CoNLL IOB): pass --format jsonl or --format iob"
    )


def read_docs(path: Path, vocab: Vocab, file_format: str = "auto", scheme: str = "auto") -> Iterator[Doc]:
    """The sentences of a JSONL (tags in `scheme`, "auto" = `detect_scheme`) or CoNLL IOB
    file (see `corpus_format`)."""
    path = Path(path)
    if corpus_format(path, file_format) == "iob":
        return read_iob_docs(path, vocab)
    return read_jsonl_docs(path, vocab, detect_scheme(path) if scheme == "auto" else scheme)


def read_iob_docs(path: Path, vocab: Vocab) -> Iterator[Doc]:
    """One Doc per sentence of a CoNLL column file (token first, IOB1 or IOB2 tag last,
    sentences separated by blank lines, documents by `-DOCSTART-` lines), read by spaCy's
    `ner` converter (`spacy convert --converter ner`), which groups the sentences of a file
    without `-DOCSTART-` lines ten to a document. The id of the s-th sentence of the d-th
    document is `doc<d>_<s>`, so a corrected copy of the file gets the same ids."""
    path = Path(path)
    if not path.is_file():
        raise CorpusNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise CorpusFormatError(
            f"{path}:{line}: not UTF-8 text (byte offset {err.start} in the file: "
            f"{raw[err.start : err.start + 1]!r}); re-save it as UTF-8"
        ) from None
    text = _DOCSTART_RE.sub(_SPACY_DOCSTART, text)
    try:
        documents = list(conll_ner_to_docs(text, n_sents=10, no_print=True))
    except (ValueError, KeyError) as err:
        raise CorpusFormatError(f"{path}: not a CoNLL IOB file ({err})") from None
    for d, document in enumerate(documents):
        for s, sentence in enumerate(document.sents):
            spans = [(ent.start - sentence.start, ent.end - sentence.start, ent.label_) for ent in sentence.ents]
            yield _make_doc(vocab, f"doc{d}_{s}", [token.text for token in sentence], spans)


def read_jsonl_records(path: Path) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line of a JSONL file; a line that is
    not a JSON object raises CorpusFormatError naming the file and line."""
    path = Path(path)
    for line_no, line in _lines(path):
        try:
            yield line_no, _json_object(line)
        except RecordError as err:
            raise CorpusFormatError(f"{path}:{line_no}: {err}") from None


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, text) of the non-blank lines of a text file."""
    if not path.is_file():
        raise CorpusNotFoundError(f"{path}: no such file")
    offset = 0
    with path.open("rb") as file_:
        for line_no, raw in enumerate(file_, start=1):
            try:
                # utf-8-sig: a byte order mark from an editor must not make line 1 invalid JSON
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise CorpusFormatError(
                    f"{path}:{line_no}: not UTF-8 text (byte offset {offset + err.start} in the file: "
                    f"{raw[err.start : err.start + 1]!r}); re-save it as UTF-8"
                ) from None
            offset += len(raw)
            if line.strip():
                yield line_no, line


def read_docbin(path: Path, vocab: Vocab) -> List[Doc]:
    """All docs of a .spacy file, user_data included. DocBin decodes each doc's
    user_data with srsly, which looks up its msgpack decoders (a catalogue scan of
    the installed packages' entry points) once per doc; that scan was 90 % of the
    read time for CoNLL train, so it is done once here."""
    path = Path(path)
    if not path.is_file():
        raise CorpusNotFoundError(f"{path}: no such .spacy file")
    decoders = srsly.msgpack.msgpack_decoders
    found = decoders.get_all()
    decoders.get_all = lambda: found  # instance attribute shadowing the method
    try:
        return list(DocBin().from_disk(path).get_docs(vocab))
    except ValueError as err:  # spaCy's E1014 does not say which file
        raise CorpusFormatError(f"{path}: not a .spacy (DocBin) file ({err})") from err
    finally:
        del decoders.get_all


def write_jsonl_docs(docs: Iterable[Doc], path: Path) -> int:
    """Export Docs as BIO JSONL (the inverse of `read_jsonl_docs`); returns the
    number of lines. Docs without `user_data["id"]` get the id `doc_{i}`."""
    lines = [
        json.dumps(
            {"id": doc.user_data.get("id", f"doc_{i}"), "tokens": [t.text for t in doc], "ner_tags": doc_to_bio(doc)},
            ensure_ascii=False,
        )
        + "\n"
        for i, doc in enumerate(docs)
    ]
    write_atomic(path, "".join(lines))
    return len(lines)


def convert_corpus(
    input_path: Path, output_path: Path, lang: str = "en", file_format: str = "auto", scheme: str = "auto"
) -> int:
    """Convert JSONL (BIO, BILUO or IO tags, `scheme`) or CoNLL IOB (see `corpus_format`)
    into a .spacy DocBin (user_data kept) and return the number of docs. The whole input
    is validated before anything is written, and the output appears atomically, so a
    failure never leaves a partial corpus. Repaired stray I- tags of JSONL are reported
    as a BIORepairWarning."""
    vocab = spacy.blank(lang).vocab
    doc_bin = DocBin(store_user_data=True)
    for doc in read_docs(Path(input_path), vocab, file_format, scheme):
        doc_bin.add(doc)
    if not len(doc_bin):
        raise DataError(f"{input_path}: no sentences to convert (the file is empty or blank)")
    write_atomic(output_path, doc_bin.to_bytes())
    return len(doc_bin)


def _json_object(line: str) -> Dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecordError(f"invalid JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:  # an integer of more than 4,300 digits
        raise RecordError(f"invalid JSON ({err})") from None
    except RecursionError:
        raise RecordError("invalid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {json_type(record)}")
    try:  # a \ud800-style escape decodes to a lone surrogate, which no later step can encode
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise RecordError(f"invalid Unicode: a lone surrogate escape ({err.object[err.start]!r})") from None
    return record


def _parse_record(line: str, scheme: str = "bio") -> Tuple[str, List[str], List[str]]:
    record = _json_object(line)
    missing = [key for key in ("id", "tokens", "ner_tags") if key not in record]
    if missing:
        raise RecordError("missing key(s) " + ", ".join(repr(key) for key in missing))
    if not isinstance(record["id"], str):
        raise RecordError(f"'id' must be a string, got {json_type(record['id'])}")
    tokens = _string_list(record, "tokens")
    tags = _string_list(record, "ner_tags")
    if not tokens:
        raise RecordError("'tokens' is empty")
    if len(tokens) != len(tags):
        raise RecordError(f"'tokens' has {len(tokens)} items but 'ner_tags' has {len(tags)}")
    _check_tokens(tokens)
    check_tags(tags, scheme)
    return record["id"], tokens, tags


def _string_list(record: Dict[str, Any], key: str) -> List[str]:
    value = record[key]
    if not isinstance(value, list):
        raise RecordError(f"'{key}' must be an array of strings, got {json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"'{key}'[{i}] must be a string, got {json_type(item)}")
    return value


def _check_tokens(tokens: List[str]) -> None:
    for i, token in enumerate(tokens):
        if not token:
            raise RecordError(f"token {i} is an empty string")
        if _WHITESPACE_RE.search(token):
            raise RecordError(f"token {i} ({token!r}) contains whitespace")


def _make_doc(vocab: Vocab, record_id: str, tokens: List[str], spans: List[SpanTriple]) -> Doc:
    doc = Doc(vocab, words=tokens, spaces=_guess_spaces(tokens))
    doc.ents = [Span(doc, start, end, label=label) for start, end, label in spans]
    doc.user_data["id"] = record_id
    return doc


def _guess_spaces(tokens: List[str]) -> List[bool]:
    """Whitespace after each token, so that `doc.text` reads like normal prose
    ("Smith , 42 ." becomes "Smith, 42.") instead of a token list."""
    spaces = [
        token not in _NO_SPACE_AFTER and next_token not in _NO_SPACE_BEFORE
        for token, next_token in zip(tokens, tokens[1:])
    ]
    return spaces + [False]
