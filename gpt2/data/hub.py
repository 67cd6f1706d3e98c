"""Whether the Hugging Face hub can be reached: one TCP connection to $HF_ENDPOINT (or
the proxy that would carry it), no retries, so a machine without a network fails at
once instead of after huggingface_hub's retries."""
import os
import socket
import urllib.parse
import urllib.request

from gpt2.data.errors import DataError

DEFAULT_ENDPOINT = "https://huggingface.co"  # huggingface_hub's own, when HF_ENDPOINT is unset
CONNECT_TIMEOUT_S = 5.0


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
