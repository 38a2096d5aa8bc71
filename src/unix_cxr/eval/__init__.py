"""Evaluation: CheXpert labels, report and image metrics, cycle consistency, results cards and parity with the
authors' goldens."""
