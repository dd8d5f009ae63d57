"""Credentials never leave memory: redaction by key name and by value.

Secrets are masked by key name (``secret``, ``token``, ``SSECustomerKey``, ...) and by
value: every string of any storage options this process used, of the credential files
(``~/.aws``, Google key files) and of the credential environment variables is replaced
by ``***`` wherever it appears, whatever its key (:func:`known_secrets`).

::

    redact     a config/options copy without credentials
    scrub      a text without any known secret
    register_secrets / known_secrets   the process-wide registry of secret values
    SecretFilter / install_secret_filter   every log line scrubbed

``frameexit.storage`` registers the options of every filesystem it opens and re-exports
these names (``from frameexit.storage import redact`` keeps working).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

# Key names that hold credentials, as patterns (not a fixed list): any spelling of
# secret/token/password/credential/signature/private key/connection string, s3fs's
# ``key``, AWS/Azure/GCS access keys, SAS tokens, ``Authorization`` headers.
_SECRET_KEY = re.compile(
    r"""(^|[_\-.])(
        secret | token | passw(or)?d | passphrase | pwd | credentials? | signature | sig
      | private[_\-]?key | api[_\-]?key | access[_\-]?key(_id)? | account[_\-]?key
      | connection[_\-]?string | sas | auth(orization)? | session | cookie | key(_id)?
    )($|[_\-.])""",
    re.IGNORECASE | re.VERBOSE,
)
# Query parameters of pre-signed / SAS URLs that carry a credential.
_SECRET_QUERY = re.compile(
    r"^(x-amz-(security-token|signature|credential)|sig|signature|token|access_token|sas)$",
    re.IGNORECASE,
)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key names a credential (see the patterns above), in any
    spelling: ``aws_secret_access_key``, ``SecretAccessKey``, ``sessionToken``,
    ``SSECustomerKey`` (camelCase words are split before matching)."""
    text = str(name)
    return bool(_SECRET_KEY.search(text) or _SECRET_KEY.search(_CAMEL.sub("_", text)))


def _redact_url(text: str) -> str:
    """A URL without the password of its user info and without credential query values."""

    def one(match: re.Match) -> str:
        url = match.group(0)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            return url
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            netloc = f"{REDACTED}@{host}"
        query = parts.query
        if query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_QUERY.match(k) or is_secret_key(k) for k, _ in pairs):
                query = "&".join(
                    f"{k}={REDACTED}" if _SECRET_QUERY.match(k) or is_secret_key(k) else f"{k}={v}"
                    for k, v in pairs
                )
        if netloc == parts.netloc and query == parts.query:
            return url
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    return _URL.sub(one, text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (nested dicts, lists, dataclasses' dicts, strings) in which
    every value under a credential-like key is ``***``, every known secret value
    (:func:`known_secrets`: storage options, credential files, credential variables) is
    ``***`` wherever it appears, whatever its key, and every URL has its user info and
    credential query parameters masked. A ``storage_options`` mapping met on the way is
    registered first (:func:`register_secrets`). The input is not changed."""
    _register_nested_options(value)
    return _redact(value, _ordered(known_secrets()))


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED
                if is_secret_key(k) and v not in (None, "", {}, [])
                else _redact(v, secrets)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, secrets) for v in value)
    if isinstance(value, str):
        value = _replace(value, secrets)
        return _redact_url(value) if "://" in value else value
    return value


def secret_values(value: Any) -> set[str]:
    """Every credential string inside ``value``: what :func:`redact` masks by key name
    (4 characters or more), and every string of a nested ``storage_options`` mapping
    (:data:`MIN_SECRET_LENGTH` or more, :data:`PUBLIC_OPTION_KEYS` aside), for scrubbing
    texts that were built from it, e.g. an exception message."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            if is_secret_key(k) and isinstance(v, str | bytes) and len(v) >= 4:
                found.add(v.decode() if isinstance(v, bytes) else v)
            elif str(k) == "storage_options":
                found |= {s for s in _option_secrets(v) if len(s) >= MIN_SECRET_LENGTH}
                found |= secret_values(v)
            else:
                found |= secret_values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= secret_values(v)
    elif isinstance(value, str) and "://" in value:
        for match in _URL.finditer(value):
            parts = urllib.parse.urlsplit(match.group(0))
            if parts.password and len(parts.password) >= 4:
                found.add(parts.password)
    return found


def scrub(text: str, *sources: Any) -> str:
    """``text`` without any secret: every :func:`known_secrets` value, and every value
    of ``sources`` — storage options: all their strings (see :func:`register_secrets`,
    which they are added to) and those under credential-like keys — replaced by ``***``
    (also URL-quoted and JSON-escaped), and URLs redacted. For messages that quote what
    a library raised, and for every log line (:class:`SecretFilter`)."""
    out = str(text)
    by_key: set[str] = set()
    for source in sources:
        register_secrets(source)
        by_key |= secret_values(source)
    out = _replace(out, _ordered(known_secrets() | _expand(by_key, minimum=4)))
    return _redact_url(out) if "://" in out else out


# --------------------------------------------------------------------------- secrets by value

#: A value shorter than this is masked by its key only: as a bare string it would hit
#: ordinary words and numbers ("us-east-1" is 9, so regions are public keys below).
MIN_SECRET_LENGTH = 8

#: Storage option names whose values are settings, not credentials (endpoint, region,
#: profile name, flags): the only option values not scrubbed wherever they appear.
PUBLIC_OPTION_KEYS = frozenset(
    {
        "endpoint_url", "region_name", "region", "profile", "profile_name", "project",
        "account_name", "anon", "use_ssl", "verify", "requester_pays", "version_aware",
        "signature_version", "addressing_style", "default_location", "access",
        "consistency", "acl", "cache_regions", "default_block_size", "block_size",
        "max_concurrency", "fixed_upload_size", "skip_instance_cache",
        "use_listings_cache", "listings_expiry_time", "default_cache_type", "cache_type",
        "mode", "retries", "max_attempts", "total_max_attempts", "connect_timeout",
        "read_timeout", "storageclass", "storage_class", "serversideencryption",
        "ssecustomeralgorithm",
    }
)  # fmt: skip

# Environment variables holding credentials: the standard ones of botocore, adlfs/azure
# and gcsfs/google-auth, and any other whose name says it is one (HF_TOKEN, ...).
_ENV_SECRET_NAMES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "GOOGLE_APPLICATION_CREDENTIALS",
)  # fmt: skip
_ENV_SECRET_NAME = re.compile(
    r"(^|_)(SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|API_?KEY|ACCESS_?KEY|"
    r"PRIVATE_?KEY|ACCOUNT_?KEY|STORAGE_?KEY|CONNECTION_?STRING|SAS_?TOKEN)(_|$)",
    re.IGNORECASE,
)
_MAX_CREDENTIAL_FILE = 1024**2
_INI_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*[=:]\s*(.*?)\s*$")
_PAIRS = re.compile(r"[;&]")

_lock = threading.Lock()
_registered: set[str] = set()
_ambient: tuple[Any, frozenset[str]] = (None, frozenset())
_files: dict[str, tuple[tuple[int, int], frozenset[str]]] = {}


def _expand(values: Iterable[str], *, minimum: int = MIN_SECRET_LENGTH) -> set[str]:
    """The spellings a secret may be quoted in: itself, URL-quoted, JSON/``repr``-escaped
    (multi-line PEM keys), each long line of it, and the credential parts of a connection string or
    SAS query (``AccountKey=...;``, ``sig=...&``), plain and URL-decoded."""
    out: set[str] = set()
    for value in values:
        if not isinstance(value, str) or len(value) < minimum:
            continue
        out |= {value, json.dumps(value)[1:-1], urllib.parse.quote(value, safe="")}
        if "\n" in value:
            out |= {line.strip() for line in value.splitlines() if len(line.strip()) >= minimum}
        if "=" in value and _PAIRS.search(value):
            for pair in _PAIRS.split(value.lstrip("?")):
                name, _, part = pair.partition("=")
                if is_secret_key(name) and len(part) >= minimum:
                    out |= {part, urllib.parse.unquote(part)}
    return out


def _ordered(secrets: Iterable[str]) -> list[str]:
    return sorted(secrets, key=len, reverse=True)  # longest first: no half-masked secret


def _replace(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _option_secrets(value: Any, key: Any = None) -> set[str]:
    """Every string inside storage options except the values of public keys; a local
    JSON key file named by them (gcsfs ``token="/path/key.json"``) adds its secrets."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            if str(k).lower() in PUBLIC_OPTION_KEYS and not is_secret_key(k):
                continue
            found |= _option_secrets(v, k)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            found |= _option_secrets(v, key)
    elif isinstance(value, bytes):
        found |= _option_secrets(value.decode("utf-8", "replace"), key)
    elif isinstance(value, str):
        found.add(value)
        if key is not None and is_secret_key(key) and value.lower().endswith(".json"):
            found |= _file_secrets(value, _json_secrets)
    return found


def register_secrets(*values: Any) -> None:
    """Add secret values to the process-wide registry that :func:`scrub`, :func:`redact`
    and :class:`SecretFilter` mask wherever they appear, whatever their key: strings as
    they are, mappings (storage options) with every string inside them except the
    values of :data:`PUBLIC_OPTION_KEYS`. Values shorter than :data:`MIN_SECRET_LENGTH`
    are left to masking by key name. Every filesystem call with storage options
    registers them (:func:`url_to_fs`), so does every config passing :func:`redact`."""
    found: set[str] = set()
    for value in values:
        found |= _option_secrets(value)
    found = _expand(found)
    if found - _registered:
        with _lock:
            _registered.update(found)


def _register_nested_options(value: Any) -> None:
    """Register every ``storage_options`` mapping inside a config-like ``value``."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if str(k) == "storage_options" and v:
                register_secrets(v)
            elif isinstance(v, Mapping | list | tuple):
                _register_nested_options(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _register_nested_options(v)


def _ini_secrets(text: str) -> set[str]:
    """Credential values of an INI file as botocore reads ``~/.aws/credentials`` and
    ``~/.aws/config`` (``aws_secret_access_key = ...`` in any profile, nested or not)."""
    found = set()
    for line in text.splitlines():
        match = _INI_LINE.match(line)
        if match and is_secret_key(match.group(1)) and match.group(2):
            found.add(match.group(2).strip("\"'"))
    return found


def _json_secrets(text: str) -> set[str]:
    """Credential values of a JSON key file (a Google service account or authorized-user
    file: ``private_key``, ``private_key_id``, ``client_secret``, ``refresh_token``)."""
    try:
        data = json.loads(text)
    except ValueError:
        return set()
    # token_uri, auth_uri, ... name public endpoints, not credentials
    return {v for v in secret_values(data) if isinstance(v, str) and "://" not in v}


def _file_secrets(path: str, parse: Any) -> frozenset[str]:
    """The secrets ``parse`` finds in a local file, cached by modification time and size
    (a missing, unreadable or oversized file has none)."""
    path = os.path.expanduser(path)
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return frozenset()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _files.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found: frozenset[str] = frozenset()
    if stat.st_size <= _MAX_CREDENTIAL_FILE:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                found = frozenset(parse(handle.read()))
        except OSError:
            pass
    _files[path] = (stamp, found)
    return found


def _credential_files() -> list[tuple[str, Any]]:
    """The credential files the storage clients read, with their parser."""
    env = os.environ
    gcloud = env.get("CLOUDSDK_CONFIG") or os.path.join("~", ".config", "gcloud")
    files = [
        (env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", _ini_secrets),
        (env.get("AWS_CONFIG_FILE") or "~/.aws/config", _ini_secrets),
        (os.path.join(gcloud, "application_default_credentials.json"), _json_secrets),
    ]
    if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        files.append((env["GOOGLE_APPLICATION_CREDENTIALS"], _json_secrets))
    return files


def _ambient_secrets() -> frozenset[str]:
    """Secrets of the environment's credential variables and of the credential files,
    read again when a variable or a file changes."""
    global _ambient
    variables = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if value and (name in _ENV_SECRET_NAMES or _ENV_SECRET_NAME.search(name))
        )
    )
    files = _credential_files()
    stamps = []
    for path, _ in files:
        try:
            stat = os.stat(os.path.expanduser(path))
            stamps.append((path, stat.st_mtime_ns, stat.st_size))
        except (OSError, ValueError):
            stamps.append((path, None, None))
    key = (variables, tuple(stamps))
    if _ambient[0] == key:
        return _ambient[1]
    found = {value for _, value in variables}
    for path, parse in files:
        found |= _file_secrets(path, parse)
    result = frozenset(_expand(found))
    _ambient = (key, result)
    return result


def known_secrets() -> frozenset[str]:
    """Every secret value this process knows: registered storage options
    (:func:`register_secrets`), the environment's credential variables
    (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ACCESS_KEY_ID``,
    ``AZURE_STORAGE_KEY``, ``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_SAS_TOKEN``,
    ``AZURE_CLIENT_SECRET``, any ``*_TOKEN``/``*_SECRET``/``*_PASSWORD``...) and the
    credential files (``~/.aws/credentials`` and ``~/.aws/config`` or
    ``AWS_SHARED_CREDENTIALS_FILE``/``AWS_CONFIG_FILE``; the JSON key file of
    ``GOOGLE_APPLICATION_CREDENTIALS`` and gcloud's application default credentials)."""
    with _lock:
        registered = frozenset(_registered)
    return registered | _ambient_secrets()


class SecretFilter(logging.Filter):
    """A logging filter that scrubs every record (message, traceback, stack) of every
    known secret (:func:`scrub`). It never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_secret_filter() -> int:
    """Put a :class:`SecretFilter` on every logging handler of this process (the root's,
    every named logger's, logging's last-resort handler) that has none; returns how many
    were added. Call it after anything that adds handlers (logging setup, ``ray.init``)."""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers += logger.handlers
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    added = 0
    for handler in handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
            added += 1
    return added
