"""Fidelity: predicted influence against retraining the head (`validate`) and the whole
pipeline (`lds`)."""
