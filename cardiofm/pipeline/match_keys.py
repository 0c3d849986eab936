"""Site-local match keys: finding a study's annotations without writing its patient id anywhere.

A site's annotation files are named by a DICOM attribute of the study (``PatientID`` or
``AccessionNumber``, see ``annotations.match_by`` in ``site.yaml``). select-series reads those
attributes in memory and records only their keyed hash (HMAC-SHA256 under the site's secret match
key) in ``study.json``; import-labels hashes the keys found in the annotation file names (or CSV rows)
under the same secret and compares. The secret lives beside the site's ``site.yaml``
(``.cardiofm/match.key``, mode 0600; another path with the steps' ``match_key_file``), is created on
first use and is never written into a dataset, a work folder, a report or a log: without it a hash
cannot be tied back to a patient, and a dictionary of likely patient ids does not help.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from cardiofm.errors import ConfigError

#: Default location of the secret, relative to the folder of the site's ``site.yaml``.
KEY_FILE = Path(".cardiofm") / "match.key"
#: Prefix of every hashed key (so a hash is never mistaken for, or compared with, a raw id).
PREFIX = "hmac-sha256:"


def key_file_for(site_config: str | None, match_key_file: str | None) -> Path | None:
    """Where the site's secret is: ``match_key_file``, else beside ``site_config``; None without either."""
    if match_key_file:
        return Path(match_key_file)
    return Path(site_config).parent / KEY_FILE if site_config else None


def load_or_create_secret(path: Path) -> bytes:
    """The site's secret match key; created (32 random bytes, mode 0600) when the file does not exist yet.

    Creation is atomic (written aside, then linked into place), so parallel steps agree on one secret.

    Raises
    ------
    ConfigError
        If the file cannot be read or created (e.g. a read-only site folder), naming what to set.
    """
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # another step created it first: use that one
            finally:
                aside.unlink()
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the site's match key {path.name} in {path.parent.name}/ ({exc.strerror}): "
            "make that folder writable, or set match_key_file (MATCH_KEY_FILE) to a site-local path"
        ) from None
    if len(text) < 32:
        raise ConfigError(f"the site's match key {path.name} is too short; delete it to have a new one created")
    return text.encode()


def match_hash(secret: bytes, value: str) -> str:
    """The keyed hash recorded for a study attribute; ``""`` for an empty value."""
    if not value:
        return ""
    return PREFIX + hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def _pattern_regex(file_pattern: str) -> re.Pattern[str]:
    head, sep, tail = file_pattern.partition("{key}")
    if not sep:
        raise ConfigError(f"annotation file_pattern {file_pattern!r} has no {{key}}; e.g. '{{key}}.mps'")
    return re.compile(re.escape(head) + r"([^/]+?)" + re.escape(tail))


def find_file(folder: Path, file_pattern: str, hashed: str, secret: bytes) -> tuple[Path, str] | None:
    """The file in ``folder`` whose name (``file_pattern`` with its ``{key}``) hashes to ``hashed``, and that key.

    The key is for :func:`redact` only: never write or log it.
    """
    if not hashed or not folder.is_dir():
        return None
    regex = _pattern_regex(file_pattern)
    for path in sorted(folder.glob(file_pattern.replace("{key}", "*"))):
        found = regex.fullmatch(path.relative_to(folder).as_posix())
        if found and path.is_file() and hmac.compare_digest(match_hash(secret, found.group(1)), hashed):
            return path, found.group(1)
    return None


def find_row(keys: list[str], hashed: str, secret: bytes) -> str | None:
    """The key among ``keys`` (e.g. a CSV's case column) that hashes to ``hashed``."""
    return next((k for k in keys if hashed and hmac.compare_digest(match_hash(secret, k), hashed)), None)


def redact(message: str, keys: set[str], match_by: str) -> str:
    """``message`` with every raw key (e.g. a patient id in an annotation file name) replaced by a placeholder."""
    for key in sorted(keys, key=len, reverse=True):
        message = message.replace(key, f"<{match_by} of this case>")
    return message
