"""A bearer token that only ever goes to its own origin (plain Python, no Dagster)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import requests.auth

__all__ = ["Bearer", "BearerAuth", "is_loopback_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer <token>`` on one prepared request; the token is not in the repr."""

    def __init__(self, token: str) -> None:
        self._token = token

    @property
    def header(self) -> str:
        """The ``Authorization`` header's value."""
        return f"Bearer {self._token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self.header
        return r

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"


@dataclass(frozen=True)
class Bearer:
    """``Authorization: Bearer <token>`` for requests to ``url``'s host and port only.

    Sent over https, or over plain http to a loopback host (tests). Another host, another port or
    plain http elsewhere never sees it, redirects included. The token is not in the repr.
    """

    url: str
    token: str = field(repr=False)

    def applies_to(self, url: str) -> bool:
        scheme, host, port = _origin(url)
        _, own_host, own_port = _origin(self.url)
        if not host or host != own_host or port != own_port:
            return False
        return scheme == "https" or (scheme == "http" and is_loopback_host(host))

    @property
    def usable(self) -> bool:
        """False when the token could never be sent (plain http to a host that is not loopback)."""
        return self.applies_to(self.url)

    def auth(self) -> BearerAuth:
        return BearerAuth(self.token)
