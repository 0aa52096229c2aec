"""Tokens and scopes: who sees which request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from vividly.runtime.auth import (
    AuthError,
    Principal,
    TokenCache,
    WeakSecret,
    check_secret,
    mint,
    verify,
)

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


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        "x" * 31,
        "change-me-to-a-long-random-secret-in-production",
        "please-CHANGEME-0123456789abcdefghijklmnop",
        "a" * 64,
        "ab" * 40,
    ],
)
def test_a_weak_or_placeholder_secret_is_refused(secret: str) -> None:
    with pytest.raises(WeakSecret):
        check_secret(secret)


def test_a_generated_secret_passes() -> None:
    import secrets

    check_secret(secrets.token_urlsafe(32))
    check_secret(SECRET)


def test_the_api_refuses_to_start_with_a_short_secret(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VIVIDLY_HOME": str(tmp_path),
        "VIVIDLY_JWT_SECRET": "too-short",
        # Nothing listens here: it must refuse before it connects to anything.
        "VIVIDLY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "VIVIDLY_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "services.projector.api.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "at least 32" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_verified_token_is_kept_only_until_it_expires_and_a_bad_one_never() -> None:
    cache = TokenCache(SECRET, max_entries=3)
    token = mint(SECRET, role="teacher", sub="t-1", org="org-9", ttl_s=1)
    exp = time.time() + 1
    assert cache.verify(token) == Principal("t-1", "teacher", "org-9")
    assert cache.verify(token) == Principal("t-1", "teacher", "org-9")  # from the cache
    forged = mint("another-secret-0123456789abcdef0123456789", role="admin", sub="t-1")
    for _ in range(2):  # a failure is not kept: refused every time
        with pytest.raises(AuthError, match="invalid"):
            cache.verify(forged)
    while time.time() < exp + 1:  # wait for the expiry (the token's exp is whole seconds)
        time.sleep(0.05)
    with pytest.raises(AuthError, match="expired"):
        cache.verify(token)
    with pytest.raises(AuthError, match="expired"):  # and it stays refused
        cache.verify(token)


def test_the_token_cache_is_bounded() -> None:
    cache = TokenCache(SECRET, max_entries=3)
    tokens = [mint(SECRET, role="student", sub=f"s-{i}", org="org-9") for i in range(5)]
    assert [cache.verify(t).sub for t in tokens] == [f"s-{i}" for i in range(5)]
    assert len(cache._valid) <= 3
