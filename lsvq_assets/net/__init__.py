"""HTTP for the clip sources: error classes, the shared client, streaming to disk."""

from lsvq_assets.net.auth import Bearer
from lsvq_assets.net.client import Attempt, HttpClient, Opened, fix_location, redirect_reason
from lsvq_assets.net.errors import (
    FetchFailure,
    classify_network_error,
    disk_failure,
    parse_retry_after,
    status_failure,
)
from lsvq_assets.net.fetcher import FetchResult, HttpFetcher
from lsvq_assets.net.stream import CHUNK_SIZE, append_to_file, stream_to_file, write_all

__all__ = [
    "CHUNK_SIZE",
    "Attempt",
    "Bearer",
    "FetchFailure",
    "FetchResult",
    "HttpClient",
    "HttpFetcher",
    "Opened",
    "append_to_file",
    "classify_network_error",
    "disk_failure",
    "fix_location",
    "parse_retry_after",
    "redirect_reason",
    "status_failure",
    "stream_to_file",
    "write_all",
]
