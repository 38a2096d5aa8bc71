"""Evaluation: CheXpert labels, report and image metrics, results cards."""
