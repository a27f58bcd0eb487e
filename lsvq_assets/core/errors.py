"""Errors a user can fix; the CLI prints them without a traceback and exits 2."""

from __future__ import annotations

LABELS_HINT = (
    "LSVQ label files: the PatchVQ CSVs (LSVQ_whole_train.csv, LSVQ_whole_test.csv, "
    "LSVQ_whole_test_1080p.csv; https://github.com/baidut/PatchVQ) or the FAST-VQA/DOVER "
    "labels (train_labels.txt, labels_test.txt, labels_1080p.txt) that the Hugging Face mirror "
    "https://huggingface.co/datasets/teowu/LSVQ-videos points to."
)


class UserError(Exception):
    """A problem with the user's input or setup: a message that says what and what to do."""

    exit_code = 2


class ManifestError(UserError):
    """The manifest file cannot be used as a whole (missing, empty, not text, no columns...)."""
