"""The ways a kiln-train command ends other than success, each with its reason and exit code.

The operator turns `reason` into a condition reason and `message` into its message, and its Job's
podFailurePolicy keys on the exit code: retrying a permanent error only makes a retry storm, while a
transient one (an S3 endpoint restarting) deserves the Job's backoff.
"""

from __future__ import annotations

# Exit codes (documented in docs/pod-contract.md).
EXIT_OK = 0  # Succeeded, GateFailed and Skipped: the command did its job, the outcome is in the message
EXIT_PERMANENT = 10  # bad spec, bad data, rejected parameter, missing object, wrong credentials
EXIT_TRANSIENT = 11  # the store or the source could not be reached
EXIT_CRASH = 12  # anything unexpected; the message carries the last lines of the traceback


class TrainError(Exception):
    """A failure with a CamelCase reason for the operator and a one-line message for a person."""

    reason = "Failed"
    exit_code = EXIT_PERMANENT

    def __init__(self, message: str, *, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason
        self.details = details or {}


class InvalidSpec(TrainError):
    reason = "InvalidSpec"


class InvalidData(TrainError):
    """The source was read but is not parseable as the declared format."""

    reason = "InvalidData"


class ValidationFailed(TrainError):
    """Schema checks failed; `details["failures"]` lists them column by column."""

    reason = "ValidationFailed"


class InvalidParameter(TrainError):
    """scikit-learn (or the allow-list) rejected an estimator parameter."""

    reason = "InvalidParameter"


class DatasetChanged(TrainError):
    """The source no longer has the content the run was planned on."""

    reason = "DatasetChanged"


class SourceError(TrainError):
    """Reading or writing an object failed; the reason says why (not found, denied, unreachable)."""

    reason = "SourceNotFound"


class Unreachable(SourceError):
    reason = "SourceUnreachable"
    exit_code = EXIT_TRANSIENT


class NoSuccessfulTrials(TrainError):
    reason = "NoSuccessfulTrials"


class NotReproducible(TrainError):
    """The winning trial's model, refitted, does not score what the trial reported."""

    reason = "NotReproducible"


class InvalidArtifact(TrainError):
    """A stored model that cannot be loaded safely: damaged, the wrong format, or holding types Kiln
    does not trust (reason UntrustedTypes)."""

    reason = "InvalidArtifact"


class DigestMismatch(TrainError):
    reason = "DigestMismatch"
