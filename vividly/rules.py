"""What a request may hold: the one statement of the field rules that the API's schema and
the pipeline's validation stage both check (so neither can drift from the other)."""

from __future__ import annotations

#: Characters of an id (student, organization, request): letters, digits and ``_.:@-``.
ID_CHARS = r"[A-Za-z0-9_.:@-]"
#: A student or organization id: 1-64 of :data:`ID_CHARS`, starting with a letter or digit.
ID_PATTERN = rf"^[A-Za-z0-9]{ID_CHARS}{{0,63}}$"
#: A request id as a path or query parameter (a UUID, or an id of another producer).
REQUEST_ID_PATTERN = rf"^{ID_CHARS}{{1,128}}$"

GRADES = ("K", *(str(g) for g in range(1, 13)))
TOPIC_MIN, TOPIC_MAX = 3, 200
OBJECTIVE_MAX = 1000
DURATION_MIN, DURATION_MAX = 1, 15


def normalise_grade(raw: str) -> str | None:
    """``K`` or ``1``-``12`` from what people write (``kg``, ``05``…); None if not a grade."""
    g = raw.strip().upper()
    if g in ("K", "KG", "KINDERGARTEN", "0"):
        return "K"
    if len(g) <= 2 and g.isascii() and g.isdigit() and 1 <= int(g) <= 12:
        return str(int(g))
    return None
