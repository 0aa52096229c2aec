from __future__ import annotations

import pytest

from services.ingest.handlers import InvalidRequest, validate
from vividly.events import WorkItem
from vividly.rules import normalise_grade


def request(**fields: object) -> WorkItem:
    w = WorkItem(request_id="r", stage="validation")
    spec = {
        "student_id": "stu-1",
        "organization_id": "org-1",
        "topic": "Photosynthesis",
        "learning_objective": "Explain it",
        "grade_level": "10",
        "duration_minutes": 5,
    }
    spec.update(fields)
    for k, v in spec.items():
        setattr(w.request, k, v)
    return w


def test_a_good_request_passes_with_the_grade_normalised() -> None:
    out = validate(request(grade_level="kindergarten"))
    assert out["grade_level"] == "K"
    assert out["target_words"] == 750


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("topic", "ab"),
        ("topic", "x" * 201),
        ("learning_objective", ""),
        ("learning_objective", "y" * 1001),
        ("grade_level", "13"),
        ("grade_level", "ten"),
        ("duration_minutes", 0),
        ("duration_minutes", 16),
        ("student_id", "has space"),
        ("student_id", ""),
        ("organization_id", "bad/org"),
    ],
)
def test_each_rule_names_its_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(request(**{field: value}))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert info.value.is_retryable is False


def test_grades() -> None:
    assert [normalise_grade(g) for g in ("K", "0", "1", "07", "12", "13", "")] == [
        "K",
        "K",
        "1",
        "7",
        "12",
        None,
        None,
    ]
