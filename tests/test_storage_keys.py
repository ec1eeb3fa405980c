"""Object keys: traversal and malformed keys are refused before any I/O (no server needed)."""

from __future__ import annotations

import pytest

from kdflow.errors import StorageError
from kdflow.infra.storage import parse_s3_uri, validate_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/key", "a/../../b", "a//b", "a/./b"])
def test_key_traversal_refused(key):
    with pytest.raises(StorageError):
        validate_key(key)


@pytest.mark.parametrize("uri", ["s3://A_/runs", "s3://ab/x", "http://bucket/x", "s3://bucket/../x"])
def test_malformed_s3_uri_refused(uri):
    with pytest.raises(StorageError, match="storage.root"):
        parse_s3_uri(uri)


def test_s3_uri_parts():
    assert parse_s3_uri("s3://kdflow/runs/a/") == ("kdflow", "runs/a")
