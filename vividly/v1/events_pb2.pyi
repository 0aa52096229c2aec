import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vividly.v1 import work_item_pb2 as _work_item_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_DEBUG: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_DEBUG: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity
SEVERITY_CRITICAL: Severity

class Envelope(_message.Message):
    __slots__ = ("event_id", "request_id", "correlation_id", "occurred_at", "producer", "schema_version", "request_created", "request_started", "stage_started", "stage_completed", "stage_failed", "stage_retry_scheduled", "event_logged", "request_completed", "request_failed", "request_retried", "breaker_state_changed", "request_waiting", "request_cancelled", "bulk_action_requested")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CREATED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_STARTED_FIELD_NUMBER: _ClassVar[int]
    STAGE_STARTED_FIELD_NUMBER: _ClassVar[int]
    STAGE_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STAGE_FAILED_FIELD_NUMBER: _ClassVar[int]
    STAGE_RETRY_SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    EVENT_LOGGED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FAILED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RETRIED_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_WAITING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    BULK_ACTION_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    request_id: str
    correlation_id: str
    occurred_at: _timestamp_pb2.Timestamp
    producer: str
    schema_version: int
    request_created: RequestCreated
    request_started: RequestStarted
    stage_started: StageStarted
    stage_completed: StageCompleted
    stage_failed: StageFailed
    stage_retry_scheduled: StageRetryScheduled
    event_logged: EventLogged
    request_completed: RequestCompleted
    request_failed: RequestFailed
    request_retried: RequestRetried
    breaker_state_changed: BreakerStateChanged
    request_waiting: RequestWaiting
    request_cancelled: RequestCancelled
    bulk_action_requested: BulkActionRequested
    def __init__(self, event_id: _Optional[str] = ..., request_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[str] = ..., schema_version: _Optional[int] = ..., request_created: _Optional[_Union[RequestCreated, _Mapping]] = ..., request_started: _Optional[_Union[RequestStarted, _Mapping]] = ..., stage_started: _Optional[_Union[StageStarted, _Mapping]] = ..., stage_completed: _Optional[_Union[StageCompleted, _Mapping]] = ..., stage_failed: _Optional[_Union[StageFailed, _Mapping]] = ..., stage_retry_scheduled: _Optional[_Union[StageRetryScheduled, _Mapping]] = ..., event_logged: _Optional[_Union[EventLogged, _Mapping]] = ..., request_completed: _Optional[_Union[RequestCompleted, _Mapping]] = ..., request_failed: _Optional[_Union[RequestFailed, _Mapping]] = ..., request_retried: _Optional[_Union[RequestRetried, _Mapping]] = ..., breaker_state_changed: _Optional[_Union[BreakerStateChanged, _Mapping]] = ..., request_waiting: _Optional[_Union[RequestWaiting, _Mapping]] = ..., request_cancelled: _Optional[_Union[RequestCancelled, _Mapping]] = ..., bulk_action_requested: _Optional[_Union[BulkActionRequested, _Mapping]] = ...) -> None: ...

class RequestCreated(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _work_item_pb2.RequestSpec
    def __init__(self, request: _Optional[_Union[_work_item_pb2.RequestSpec, _Mapping]] = ...) -> None: ...

class RequestStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStarted(_message.Message):
    __slots__ = ("stage", "attempt")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    attempt: int
    def __init__(self, stage: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class StageCompleted(_message.Message):
    __slots__ = ("stage", "attempt", "output_json", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    attempt: int
    output_json: bytes
    duration_ms: float
    def __init__(self, stage: _Optional[str] = ..., attempt: _Optional[int] = ..., output_json: _Optional[bytes] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class StageFailed(_message.Message):
    __slots__ = ("stage", "attempt", "error_message", "error_details_json", "is_retryable", "duration_ms", "input")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    IS_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    attempt: int
    error_message: str
    error_details_json: bytes
    is_retryable: bool
    duration_ms: float
    input: _work_item_pb2.WorkItem
    def __init__(self, stage: _Optional[str] = ..., attempt: _Optional[int] = ..., error_message: _Optional[str] = ..., error_details_json: _Optional[bytes] = ..., is_retryable: _Optional[bool] = ..., duration_ms: _Optional[float] = ..., input: _Optional[_Union[_work_item_pb2.WorkItem, _Mapping]] = ...) -> None: ...

class StageRetryScheduled(_message.Message):
    __slots__ = ("stage", "attempt", "due_at", "reason")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stage: str
    attempt: int
    due_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, stage: _Optional[str] = ..., attempt: _Optional[int] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class EventLogged(_message.Message):
    __slots__ = ("event_type", "message", "stage", "severity", "event_data_json")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    message: str
    stage: str
    severity: Severity
    event_data_json: bytes
    def __init__(self, event_type: _Optional[str] = ..., message: _Optional[str] = ..., stage: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., event_data_json: _Optional[bytes] = ...) -> None: ...

class RequestCompleted(_message.Message):
    __slots__ = ("video_url", "script_text", "thumbnail_url")
    VIDEO_URL_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    video_url: str
    script_text: str
    thumbnail_url: str
    def __init__(self, video_url: _Optional[str] = ..., script_text: _Optional[str] = ..., thumbnail_url: _Optional[str] = ...) -> None: ...

class RequestFailed(_message.Message):
    __slots__ = ("error_message", "error_stage", "error_details_json")
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    error_message: str
    error_stage: str
    error_details_json: bytes
    def __init__(self, error_message: _Optional[str] = ..., error_stage: _Optional[str] = ..., error_details_json: _Optional[bytes] = ...) -> None: ...

class RequestRetried(_message.Message):
    __slots__ = ("stage", "requested_by", "attempt", "bulk_id")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BULK_ID_FIELD_NUMBER: _ClassVar[int]
    stage: str
    requested_by: str
    attempt: int
    bulk_id: str
    def __init__(self, stage: _Optional[str] = ..., requested_by: _Optional[str] = ..., attempt: _Optional[int] = ..., bulk_id: _Optional[str] = ...) -> None: ...

class RequestCancelled(_message.Message):
    __slots__ = ("requested_by", "reason", "bulk_id")
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BULK_ID_FIELD_NUMBER: _ClassVar[int]
    requested_by: str
    reason: str
    bulk_id: str
    def __init__(self, requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., bulk_id: _Optional[str] = ...) -> None: ...

class BulkActionRequested(_message.Message):
    __slots__ = ("bulk_id", "action", "requested_by", "filter_json", "count", "idempotency_key", "organization_id", "reason")
    BULK_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    bulk_id: str
    action: str
    requested_by: str
    filter_json: bytes
    count: int
    idempotency_key: str
    organization_id: str
    reason: str
    def __init__(self, bulk_id: _Optional[str] = ..., action: _Optional[str] = ..., requested_by: _Optional[str] = ..., filter_json: _Optional[bytes] = ..., count: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., organization_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RequestWaiting(_message.Message):
    __slots__ = ("stage", "reason", "detail", "until")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    reason: str
    detail: str
    until: _timestamp_pb2.Timestamp
    def __init__(self, stage: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BreakerStateChanged(_message.Message):
    __slots__ = ("breaker", "old_state", "new_state", "fail_counter", "success_counter", "total_calls", "total_failures")
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    OLD_STATE_FIELD_NUMBER: _ClassVar[int]
    NEW_STATE_FIELD_NUMBER: _ClassVar[int]
    FAIL_COUNTER_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNTER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    breaker: str
    old_state: str
    new_state: str
    fail_counter: int
    success_counter: int
    total_calls: int
    total_failures: int
    def __init__(self, breaker: _Optional[str] = ..., old_state: _Optional[str] = ..., new_state: _Optional[str] = ..., fail_counter: _Optional[int] = ..., success_counter: _Optional[int] = ..., total_calls: _Optional[int] = ..., total_failures: _Optional[int] = ...) -> None: ...
