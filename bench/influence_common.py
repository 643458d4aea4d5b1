"""Shared helpers for the influence-engine benchmarks (issue 3): corpus loading,
timing on a shared machine, and query gradients built exactly as the component's
own query path builds them."""

import functools
import inspect
import os
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Sequence, Tuple

import numpy as np
import torch
from spacy.tokens import Doc, DocBin, Span

from spacy_segment_influence.corpus import read_jsonl_docs
from spacy_segment_influence.influence.gradients import FactoredGradients
from spacy_segment_influence.influence.segments import Segment, segment_gradients
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import LabelledBatch


def load_docs(path: Path, vocab, n: int = 0) -> List[Doc]:
    """First n docs (0 = all) of a BIO JSONL or .spacy corpus, ids kept in user_data."""
    path = Path(path)
    if path.suffix == ".jsonl":
        docs = []
        for doc in read_jsonl_docs(path, vocab):
            docs.append(doc)
            if n and len(docs) >= n:
                break
        return docs
    docs = list(DocBin().from_disk(path).get_docs(vocab))
    return docs[:n] if n else docs


def write_spacy(docs: Sequence[Doc], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(path)
    return path


@contextmanager
def instrumented(targets: Sequence[Tuple[object, str, str]], around: Callable[[str], ContextManager]):
    """Temporarily wrap each (owner, attribute, label) so that `around(label)` surrounds
    every call: a timer or a memory sampler around package functions."""
    patched = []
    for owner, name, label in targets:
        static = inspect.getattr_static(owner, name)
        is_classmethod = isinstance(static, classmethod)
        func = static.__func__ if is_classmethod else getattr(owner, name)

        def wrapper(*args, _func=func, _label=label, **kwargs):
            with around(_label):
                return _func(*args, **kwargs)

        functools.update_wrapper(wrapper, func)
        setattr(owner, name, classmethod(wrapper) if is_classmethod else wrapper)
        patched.append((owner, name, static))
    try:
        yield
    finally:
        for owner, name, static in reversed(patched):
            setattr(owner, name, static)


def timer(totals: Dict[str, float]) -> Callable[[str], ContextManager]:
    """An `around` for `instrumented` adding each call's inclusive seconds to totals."""

    @contextmanager
    def around(label: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            totals[label] += time.perf_counter() - start

    return around


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def maxrss_mb() -> float:
    """Peak resident set size of this process in MB: VmHWM from /proc (the high-water
    mark of this process's own memory), else ru_maxrss. ru_maxrss alone misleads in a
    subprocess: Linux carries the parent's high-water mark across fork + exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Collects named timings (seconds) and load averages for interleaved repeats:
    wall clock, and the CPU time of the whole process (all its threads), which on an
    oversubscribed machine is not inflated by the time the process waits for a core."""

    def __init__(self):
        self.times = {}
        self.cpu = {}
        self.loads = {}

    def run(self, name: str, fn: Callable[[], object]):
        cpu = time.process_time()
        start = time.perf_counter()
        out = fn()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu)
        self.loads.setdefault(name, []).append(os.getloadavg()[0])
        return out

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def cpu_median(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def best(self, name: str) -> float:
        return min(self.times[name])

    def mean_load(self, name: str) -> float:
        return statistics.mean(self.loads[name])


def query_gradients(component, docs: Sequence[Doc], spans: Sequence[Tuple[int, Span]]) -> FactoredGradients:
    """Segment gradients of (doc index, span) queries, each doc labelled with its
    predicted entities (the labelling SegmentInfluence.pipe uses), features read
    through the listener from doc.tensor. Not yet curvature-prepared."""
    ner = component.ner
    labels = ner.labels
    labellings = [[ent for ent in doc.ents if ent.label_ in labels] for doc in docs]
    features = bridge.head_features(ner, list(docs))
    tags = [bridge.tag_ids(ner, doc, ents) for doc, ents in zip(docs, labellings)]
    segments = [Segment(i, span.start, span.end) for i, span in spans]
    return segment_gradients(ner, LabelledBatch(features, tags), segments)


def read_floor(arrays: Sequence[np.ndarray]) -> Callable[[], object]:
    """One pass reading every byte of the arrays (integer sums over 8-byte views
    are memory-bound)."""
    views = [np.ascontiguousarray(a).reshape(-1).view(np.int64 if a.nbytes % 8 == 0 else np.uint8) for a in arrays]
    return lambda: [np.add.reduce(v) for v in views]


def threads() -> str:
    return f"torch threads {torch.get_num_threads()}"


def _openblas():
    """numpy's bundled OpenBLAS (scipy-openblas), for setting its thread count at run
    time without threadpoolctl; None if not found."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so"))
    if not libs:
        return None
    lib = ctypes.CDLL(libs[0])
    for setter, getter in (
        ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
        ("openblas_set_num_threads", "openblas_get_num_threads"),
    ):
        if hasattr(lib, setter) and hasattr(lib, getter):
            return getattr(lib, setter), getattr(lib, getter)
    return None


_BLAS = _openblas()


def set_blas_threads(n: int) -> None:
    if _BLAS is not None:
        _BLAS[0](int(n))


def blas_threads() -> int:
    return int(_BLAS[1]()) if _BLAS is not None else -1
