"""The errors of session handling; the HTTP layer maps each onto its `status`."""

from __future__ import annotations


class SessionError(Exception):
    """Base of the errors the HTTP layer maps onto status codes."""

    status = 500


class BadRequest(SessionError):
    """Anything wrong with a request: its body, type, SDP, candidates or settings."""

    status = 400


class ServiceFull(SessionError):
    status = 503


class Draining(SessionError):
    status = 503


class UnknownSession(SessionError):
    status = 404


class EnhancerUnavailable(SessionError):
    status = 500


class IceRestartUnsupported(SessionError):
    status = 422


class TooManyPending(SessionError):
    """This client already has max_pending_per_client sessions that are not connected."""

    status = 429


class TooManyRequests(SessionError):
    status = 429
