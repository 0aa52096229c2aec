"""Who may see what: bearer JWTs (HS256, with expiry) and the scope each role reads.

Roles:

- ``admin``: every request.
- ``teacher``: requests of their organization (claim ``org``).
- ``student``: their own requests: the pair (claim ``org``, ``sub``), where ``sub`` is the
  student id. Student ``1001`` of one school is not student ``1001`` of another.
- ``service``: may submit requests and publish; reads nothing.

The optional claim ``email`` (``vividly token --email``) is where a student's emails go:
the recipient never comes from a student's or teacher's request body.

A request outside the caller's scope is reported as not found, never as forbidden, so
its existence does not leak.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

ROLES = ("admin", "teacher", "student", "service")
READERS = frozenset({"admin", "teacher", "student"})
ALGORITHM = "HS256"
#: A usable recipient: one @, a dot in the domain, no spaces or control characters, at
#: most 254 characters. Classes are spelled out (no \s): regex engines disagree on it.
_NOT_IN_ADDRESS = r"[^@ \t\n\r\f\v\x00-\x1f\x7f-\x9f]"
EMAIL_PATTERN = f"^{_NOT_IN_ADDRESS}{{1,64}}@{_NOT_IN_ADDRESS}+\\.{_NOT_IN_ADDRESS}+$"
_EMAIL = re.compile(EMAIL_PATTERN)


def is_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL.match(value) is not None


MIN_SECRET_BYTES = 32
#: Secrets published in docs, samples and old compose files: never accepted.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me-to-a-long-random-secret-in-production",
        "changeme",
        "change-me",
        "secret",
        "your-secret-key",
        "your-256-bit-secret",
        "supersecret",
        "jwt-secret",
    }
)
_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "placeholder", "your-secret")


class WeakSecret(ValueError):
    """The API will not start with this signing secret."""


def check_secret(secret: str) -> None:
    """Refuse a secret shorter than 32 bytes or a known placeholder: either lets anyone
    who has read the docs (or guessed) mint an admin token."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        raise WeakSecret(
            f"VIVIDLY_JWT_SECRET is {size} bytes; it needs at least {MIN_SECRET_BYTES}"
            " (generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    lowered = secret.strip().lower()
    if lowered in PLACEHOLDER_SECRETS or any(w in lowered for w in _PLACEHOLDER_WORDS):
        raise WeakSecret("VIVIDLY_JWT_SECRET is a published placeholder; set a random one")
    if len(set(secret)) < 8:
        raise WeakSecret("VIVIDLY_JWT_SECRET repeats a few characters; set a random one")


class AuthError(Exception):
    """The token is missing, malformed, expired or signed with another secret."""


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: str
    org: str | None = None
    email: str | None = None

    @property
    def can_read(self) -> bool:
        return self.role in READERS

    def sees(self, organization_id: str | None, student_id: str | None) -> bool:
        """Whether a request of this organization/student is in scope."""
        if self.role == "admin":
            return True
        if self.role == "teacher":
            return organization_id is not None and organization_id == self.org
        if self.role == "student":
            return (
                student_id is not None
                and student_id == self.sub
                and (organization_id or "") == (self.org or "")
            )
        return False

    def scope_sql(self, params: list[Any], alias: str = "") -> str:
        """A SQL condition limiting rows to this caller's scope (appends its params)."""
        p = f"{alias}." if alias else ""
        if self.role == "admin":
            return "TRUE"
        if self.role == "teacher":
            params.append(self.org)
            return f"{p}organization_id = ${len(params)}"
        if self.role == "student":
            params.extend([self.sub, self.org or ""])
            return (
                f"{p}student_id = ${len(params) - 1}"
                f" AND coalesce({p}organization_id, '') = ${len(params)}"
            )
        return "FALSE"

    def for_one_request(self) -> Principal:
        """The scope to use when this caller names one request by id: pipeline services
        (role service) may read and retry any request they work on; others keep theirs."""
        return Principal(self.sub, "admin") if self.role == "service" else self

    @property
    def requested_by(self) -> str:
        return f"api:{self.role}:{self.sub}"


def mint(
    secret: str,
    *,
    role: str,
    sub: str,
    org: str | None = None,
    email: str | None = None,
    ttl_s: int = 3600,
    issuer: str = "vividly",
    now: float | None = None,
) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    if role == "teacher" and not org:
        raise ValueError("a teacher token needs an organization (--org)")
    if not sub:
        raise ValueError("a token needs a subject (--sub)")
    if email is not None and not is_email(email):
        raise ValueError(f"--email must be an email address (got {email!r})")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role,
        "iss": issuer,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if org:
        claims["org"] = org
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, issuer: str = "vividly") -> Principal:
    return verify_until(secret, token, issuer)[0]


def verify_until(secret: str, token: str, issuer: str = "vividly") -> tuple[Principal, float]:
    """The token's principal and the time (epoch seconds) it is valid until."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    role = claims.get("role")
    if role not in ROLES:
        raise AuthError(f"invalid token: unknown role {role!r}")
    org = claims.get("org")
    if org is not None and (not isinstance(org, str) or not org):
        raise AuthError("invalid token: org must be a non-empty string")
    if role == "teacher" and not org:
        raise AuthError("invalid token: a teacher token carries an organization")
    email = claims.get("email")
    if email is not None and (not isinstance(email, str) or not is_email(email)):
        raise AuthError("invalid token: email must be an email address")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token: sub must be a non-empty string")
    return Principal(sub=sub, role=role, org=org, email=email), float(claims["exp"])


class TokenCache:
    """Tokens already verified, kept until they expire: a dashboard or a script sends the
    same token on every call, and decoding and checking it again was 7% of the API's
    time on its cheapest reads (py-spy, bench.api). Only a success is kept, and it is
    the same answer a new check would give until ``exp``: the signature, issuer and
    claims of a given token never change, and a token valid now (``nbf``, ``iat``
    passed) stays valid until it expires. At most ``max_entries`` tokens; when full it
    starts again empty."""

    def __init__(self, secret: str, issuer: str = "vividly", max_entries: int = 4096) -> None:
        self.secret = secret
        self.issuer = issuer
        self.max_entries = max_entries
        self._valid: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        hit = self._valid.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._valid[token]  # expired: PyJWT says so below
        principal, until = verify_until(self.secret, token, self.issuer)
        if len(self._valid) >= self.max_entries:
            self._valid.clear()
        self._valid[token] = (principal, until)
        return principal
