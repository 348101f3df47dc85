"""Typed errors of the bundle format and the on-device runtime.

Every error carries ONE line that says what is wrong and what to do about it, so the
CLI and the device agent can show or log it as is. Catch :class:`BundleError` to handle
any refusal of a bundle; catch a subclass to react to one cause (the device agent
reports ``TargetMismatchError`` differently from a tampered download).

This module imports only the standard library: the device side depends on it.
"""

from __future__ import annotations


class BundleError(Exception):
    """A bundle was refused. ``str(err)`` is a one-line reason with the fix."""


class BundleFormatError(BundleError):
    """The file is not a well-formed bundle: not a bundle at all, truncated, or malformed."""


class BundleTooLargeError(BundleFormatError):
    """The bundle (or its model) is larger than the limit the caller allows."""


class SignatureError(BundleError):
    """The manifest's Ed25519 signature does not verify with the given public key."""


class WrongKeyError(SignatureError):
    """The bundle was signed by another key than the one given to verify it."""


class ModelIntegrityError(BundleError):
    """The model bytes do not match the size and SHA-256 the signed manifest pins."""


class TargetMismatchError(BundleError):
    """The bundle was built for another target than the device that wants to run it."""


class RuntimeUnavailableError(BundleError):
    """The runtime a bundle needs (onnxruntime, ai-edge-litert) is not installed here."""


class ModelLoadError(BundleError):
    """The runtime could not load or run the model."""


class SelfTestError(BundleError):
    """The model's output for the manifest's reference input differs from the expected one."""


class KeyFileError(ValueError):
    """A key file is missing, unreadable, of the wrong kind, or too widely readable."""
