"""Whether the Hugging Face hub can be reached: one TCP connection to $HF_ENDPOINT (or
the proxy that would carry it), no retries, so a machine without a network fails at
once instead of after huggingface_hub's retries."""
import os
import re
import socket
import urllib.parse
import urllib.request

from gpt2.data.errors import DataError

DEFAULT_ENDPOINT = "https://huggingface.co"  # huggingface_hub's own, when HF_ENDPOINT is unset
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0  # the one API request that resolves a revision


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _target(url: str) -> tuple:
    """(host, port) a request to `url` connects to: its proxy's when one applies."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    default_port = 443 if parts.scheme == "https" else 80
    return parts.hostname, parts.port or default_port


def unreachable(url: str):
    """Why `url`'s host cannot be connected to, or None when it can."""
    host, port = _target(url)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


def check_reachable(what: str, cache: str, local_route: str) -> None:
    """A DataError in one line when the hub cannot be reached."""
    reason = unreachable(endpoint())
    if reason:
        raise DataError(
            f"Cannot load {what}: the Hugging Face hub {endpoint()} cannot be reached "
            f"({reason}; not retried); set HF_HUB_OFFLINE=1 to read only the cache "
            f"{cache}, set HF_ENDPOINT to a reachable "
            f"mirror, {local_route}")


FULL_COMMIT = re.compile(r"[0-9a-f]{40}")


def commit_of(name: str, revision: str) -> str:
    """The commit hash the hub gives for dataset `name` at `revision` ("" = its default
    branch): the one request of this module to the hub's API (tests replace it)."""
    from huggingface_hub import HfApi
    return HfApi(endpoint=endpoint()).dataset_info(
        name, revision=revision or None, timeout=REQUEST_TIMEOUT_S).sha


def resolve(name: str, revision: str, what: str, cache: str, local_route: str):
    """The commit hash of `revision` of hub dataset `name`, or None when the hub has no
    such dataset (loading it then says so). A full 40-hex hash is its own commit, no
    request made; otherwise the hub is reached first (one connection, no retries)."""
    if FULL_COMMIT.fullmatch(revision):
        return revision
    check_reachable(what, cache, local_route)
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    try:
        return commit_of(name, revision) or None
    except RevisionNotFoundError:
        raise DataError(f"DATASET_REVISION={revision!r} is not a branch, tag or commit of "
                        f"Hugging Face dataset {name}: set DATASET_REVISION to one of its "
                        f"revisions, or empty for its default branch") from None
    except RepositoryNotFoundError:
        return None
    except Exception as e:  # any failure of the request ends in this one line
        raise DataError(f"Cannot ask the hub {endpoint()} which commit "
                        f"{revision or 'the default branch'} of {name} is "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"set DATASET_REVISION to a full 40-hex commit hash, or "
                        f"HF_HUB_OFFLINE=1 to read only the cache {cache}") from None
