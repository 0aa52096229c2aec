"""Tokens and scopes: who sees which request."""

from __future__ import annotations

import time

import jwt
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
    student = Principal("s-1", "student", "org-1")
    service = Principal("svc", "service")
    assert teacher.sees("org-1", "anyone")
    assert not teacher.sees("org-2", "anyone")
    assert student.sees("org-1", "s-1")
    assert not student.sees("org-1", "s-2")
    # The scope is the pair: the same student id in another school is someone else.
    assert not student.sees("org-2", "s-1")
    assert not student.sees(None, "s-1")
    assert Principal("s-1", "student").sees(None, "s-1")
    assert Principal("s-1", "student").sees("", "s-1")
    assert not Principal("s-1", "student").sees("org-1", "s-1")
    assert not service.sees("org-1", "s-1")
    assert not service.can_read
    assert service.for_one_request().sees("org-1", "s-1")  # pipeline code reads one request
    assert teacher.for_one_request() is teacher
    params: list[object] = []
    assert teacher.scope_sql(params) == "organization_id = $1"
    assert params == ["org-1"]
    assert service.scope_sql([]) == "FALSE"
    params = []
    assert student.scope_sql(params) == ("student_id = $1 AND coalesce(organization_id, '') = $2")
    assert params == ["s-1", "org-1"]


def test_the_email_claim_is_minted_checked_and_read() -> None:
    token = mint("k" * 32, role="student", sub="s-1", org="org-1", email="ada@school.example")
    who = verify("k" * 32, token)
    assert (who.sub, who.org, who.email) == ("s-1", "org-1", "ada@school.example")
    with pytest.raises(ValueError, match="email"):
        mint("k" * 32, role="student", sub="s-1", email="not an address")
    forged = jwt.encode(
        {"sub": "s-1", "role": "student", "iss": "vividly", "exp": 2**40, "email": ["x@y.z"]},
        "k" * 32,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="email"):
        verify("k" * 32, forged)
    empty_org = jwt.encode(
        {"sub": "s-1", "role": "student", "iss": "vividly", "exp": 2**40, "org": ""},
        "k" * 32,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="org"):
        verify("k" * 32, empty_org)
