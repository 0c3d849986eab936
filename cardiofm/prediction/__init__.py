"""Prediction for a clinician: a CT in, landmarks, calcification, TAVI measurements and exports out."""
