"""Tokens and scopes: who sees which request."""

from __future__ import annotations

import time

import pytest

from vividly.auth import AuthError, Principal, mint, verify

SECRET = "unit-secret-0123456789abcdef0123456789abcdef"


def test_a_token_round_trips_and_expires() -> None:
    token = mint(SECRET, role="teacher", sub="t-1", org="org-9", ttl_s=60)
    assert verify(SECRET, token) == Principal("t-1", "teacher", "org-9")
    old = mint(SECRET, role="admin", sub="a", ttl_s=60, now=time.time() - 120)
    with pytest.raises(AuthError, match="expired"):
        verify(SECRET, old)
    with pytest.raises(AuthError, match="invalid"):
        verify("another-secret-0123456789abcdef0123456789", token)
    with pytest.raises(ValueError, match="organization"):
        mint(SECRET, role="teacher", sub="t")
    with pytest.raises(ValueError, match="role"):
        mint(SECRET, role="janitor", sub="j")


def test_scopes() -> None:
    teacher = Principal("t", "teacher", "org-1")
    student = Principal("s-1", "student")
    service = Principal("svc", "service")
    assert teacher.sees("org-1", "anyone")
    assert not teacher.sees("org-2", "anyone")
    assert student.sees("org-1", "s-1")
    assert not student.sees("org-1", "s-2")
    assert not service.sees("org-1", "s-1")
    assert not service.can_read
    assert service.for_one_request().sees("org-1", "s-1")  # pipeline code reads one request
    assert teacher.for_one_request() is teacher
    params: list[object] = []
    assert teacher.scope_sql(params) == "organization_id = $1"
    assert params == ["org-1"]
    assert service.scope_sql([]) == "FALSE"
