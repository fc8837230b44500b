"""What the client raises.

A failed call raises ProctorError with proctord's status code and message unchanged, except
UNAVAILABLE ("cannot reach proctord at ADDRESS: ..."), the client's own DEADLINE_EXCEEDED
("Status did not answer within 30s"), and authentication failures, which raise
AuthenticationError naming which side failed. Misuse of an object is raised as Python raises
it for multiprocessing and threading (AssertionError, ValueError, RuntimeError,
threading.BrokenBarrierError), with proctord's error, if any, as its cause.
"""

import grpc


class ProctorError(Exception):
    """A call that failed or could not be made. ``code`` is a ``grpc.StatusCode``."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message


class AuthenticationError(ProctorError):
    """proctord refused the key, or a reply did not prove that the daemon holds it."""

    def __init__(self, message):
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, message)


class KeyFileWarning(UserWarning):
    """The key file can be read by others; it is used all the same."""
