"""The one rule for which URLs may be fetched: http or https with a host."""

from __future__ import annotations

from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


def check_url(url: str) -> str | None:
    """Return None when ``url`` may be fetched, else a short reason such as ``bad-url-scheme: ftp``."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "bad-url"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        return f"bad-url-scheme: {scheme or 'none'}"
    if not parts.hostname:
        return "bad-url: no host"
    return None
