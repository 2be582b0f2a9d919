import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaultKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAULT_KIND_UNSPECIFIED: _ClassVar[FaultKind]
    DELAY: _ClassVar[FaultKind]
    UNAVAILABLE: _ClassVar[FaultKind]
    RESOURCE_EXHAUSTED: _ClassVar[FaultKind]
    PERMISSION_DENIED: _ClassVar[FaultKind]
    MALFORMED: _ClassVar[FaultKind]
FAULT_KIND_UNSPECIFIED: FaultKind
DELAY: FaultKind
UNAVAILABLE: FaultKind
RESOURCE_EXHAUSTED: FaultKind
PERMISSION_DENIED: FaultKind
MALFORMED: FaultKind

class GetTimeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TimeResponse(_message.Message):
    __slots__ = ("now",)
    NOW_FIELD_NUMBER: _ClassVar[int]
    now: _timestamp_pb2.Timestamp
    def __init__(self, now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AdvanceClockRequest(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    def __init__(self, seconds: _Optional[float] = ...) -> None: ...

class GetGroundTruthRequest(_message.Message):
    __slots__ = ("participant", "policy")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    participant: str
    policy: str
    def __init__(self, participant: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class EmptyInterval(_message.Message):
    __slots__ = ("start", "end", "rejected")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    rejected: int
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rejected: _Optional[int] = ...) -> None: ...

class PolicyGroundTruth(_message.Message):
    __slots__ = ("participant", "policy", "rejected_total", "accepted_total", "empty_intervals")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EMPTY_INTERVALS_FIELD_NUMBER: _ClassVar[int]
    participant: str
    policy: str
    rejected_total: int
    accepted_total: int
    empty_intervals: _containers.RepeatedCompositeFieldContainer[EmptyInterval]
    def __init__(self, participant: _Optional[str] = ..., policy: _Optional[str] = ..., rejected_total: _Optional[int] = ..., accepted_total: _Optional[int] = ..., empty_intervals: _Optional[_Iterable[_Union[EmptyInterval, _Mapping]]] = ...) -> None: ...

class GroundTruthResponse(_message.Message):
    __slots__ = ("now", "policies")
    NOW_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    now: _timestamp_pb2.Timestamp
    policies: _containers.RepeatedCompositeFieldContainer[PolicyGroundTruth]
    def __init__(self, now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policies: _Optional[_Iterable[_Union[PolicyGroundTruth, _Mapping]]] = ...) -> None: ...

class InjectFaultRequest(_message.Message):
    __slots__ = ("kind", "participant", "times", "delay_ms", "retry_after_seconds", "malformed_field")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_FIELD_NUMBER: _ClassVar[int]
    kind: FaultKind
    participant: str
    times: int
    delay_ms: int
    retry_after_seconds: int
    malformed_field: str
    def __init__(self, kind: _Optional[_Union[FaultKind, str]] = ..., participant: _Optional[str] = ..., times: _Optional[int] = ..., delay_ms: _Optional[int] = ..., retry_after_seconds: _Optional[int] = ..., malformed_field: _Optional[str] = ...) -> None: ...

class InjectFaultResponse(_message.Message):
    __slots__ = ("active_faults",)
    ACTIVE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    active_faults: int
    def __init__(self, active_faults: _Optional[int] = ...) -> None: ...

class ClearFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearFaultsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetCategoryRequest(_message.Message):
    __slots__ = ("participant", "category")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    participant: str
    category: str
    def __init__(self, participant: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...

class SetCategoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
