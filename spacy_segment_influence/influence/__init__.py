"""Influence: segment gradients, Hessians and the head fit, curvatures, the segment index
and its build, removal estimates, gradients beyond the head, and the CRF surrogate of a
built-in ner."""
