import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPoliciesRequest(_message.Message):
    __slots__ = ("participant",)
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    participant: str
    def __init__(self, participant: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("participant", "policy")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    participant: str
    policy: str
    def __init__(self, participant: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "available_tokens", "capacity", "refill_tokens", "refill_period_sec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    REFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REFILL_PERIOD_SEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    available_tokens: int
    capacity: int
    refill_tokens: int
    refill_period_sec: int
    def __init__(self, name: _Optional[str] = ..., available_tokens: _Optional[int] = ..., capacity: _Optional[int] = ..., refill_tokens: _Optional[int] = ..., refill_period_sec: _Optional[int] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("response_time", "correlation_id", "category", "policies")
    RESPONSE_TIME_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    response_time: _timestamp_pb2.Timestamp
    correlation_id: str
    category: str
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, response_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., correlation_id: _Optional[str] = ..., category: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("response_time", "correlation_id", "category", "policy")
    RESPONSE_TIME_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    response_time: _timestamp_pb2.Timestamp
    correlation_id: str
    category: str
    policy: Policy
    def __init__(self, response_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., correlation_id: _Optional[str] = ..., category: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class GetRequestStatsRequest(_message.Message):
    __slots__ = ("participant", "window")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    participant: str
    window: _duration_pb2.Duration
    def __init__(self, participant: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StatusCount(_message.Message):
    __slots__ = ("http_status", "count")
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    http_status: int
    count: int
    def __init__(self, http_status: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class PolicyRequestStats(_message.Message):
    __slots__ = ("policy", "responses")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    responses: _containers.RepeatedCompositeFieldContainer[StatusCount]
    def __init__(self, policy: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[StatusCount, _Mapping]]] = ...) -> None: ...

class GetRequestStatsResponse(_message.Message):
    __slots__ = ("window_start", "window_end", "policies")
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    policies: _containers.RepeatedCompositeFieldContainer[PolicyRequestStats]
    def __init__(self, window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policies: _Optional[_Iterable[_Union[PolicyRequestStats, _Mapping]]] = ...) -> None: ...
