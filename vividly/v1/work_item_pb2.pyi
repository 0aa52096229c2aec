import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestSpec(_message.Message):
    __slots__ = ("student_id", "organization_id", "topic", "learning_objective", "grade_level", "duration_minutes", "metadata_json", "idempotency_key", "student_email")
    STUDENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    LEARNING_OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    GRADE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DURATION_MINUTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STUDENT_EMAIL_FIELD_NUMBER: _ClassVar[int]
    student_id: str
    organization_id: str
    topic: str
    learning_objective: str
    grade_level: str
    duration_minutes: int
    metadata_json: bytes
    idempotency_key: str
    student_email: str
    def __init__(self, student_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., topic: _Optional[str] = ..., learning_objective: _Optional[str] = ..., grade_level: _Optional[str] = ..., duration_minutes: _Optional[int] = ..., metadata_json: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., student_email: _Optional[str] = ...) -> None: ...

class WorkItem(_message.Message):
    __slots__ = ("request_id", "correlation_id", "request", "stage", "attempt", "outputs_json", "submitted_at", "traceparent", "failure")
    class OutputsJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    correlation_id: str
    request: RequestSpec
    stage: str
    attempt: int
    outputs_json: _containers.ScalarMap[str, bytes]
    submitted_at: _timestamp_pb2.Timestamp
    traceparent: str
    failure: Failure
    def __init__(self, request_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., request: _Optional[_Union[RequestSpec, _Mapping]] = ..., stage: _Optional[str] = ..., attempt: _Optional[int] = ..., outputs_json: _Optional[_Mapping[str, bytes]] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("stage", "error_message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    error_message: str
    def __init__(self, stage: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...
