"""The NER model: the linear-chain CRF, the `crf_ner` component and its architecture, the
head's parameter layout, entity probabilities and their calibration, and the bridge that
reads the head's features, tag ids and weights from a pipeline."""
