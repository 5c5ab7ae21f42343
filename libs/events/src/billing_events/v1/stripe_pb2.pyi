from billing_events.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StripeEventReceived(_message.Message):
    __slots__ = ("meta", "stripe_event_id", "type", "api_version", "object_id", "livemode", "stripe_created", "received_at", "payload")
    META_FIELD_NUMBER: _ClassVar[int]
    STRIPE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LIVEMODE_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CREATED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    stripe_event_id: str
    type: str
    api_version: str
    object_id: str
    livemode: bool
    stripe_created: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    payload: bytes
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., stripe_event_id: _Optional[str] = ..., type: _Optional[str] = ..., api_version: _Optional[str] = ..., object_id: _Optional[str] = ..., livemode: bool = ..., stripe_created: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...
