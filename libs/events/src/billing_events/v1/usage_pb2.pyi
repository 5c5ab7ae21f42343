from billing_events.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BillingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BILLING_MODE_UNSPECIFIED: _ClassVar[BillingMode]
    BILLING_MODE_CHARGED: _ClassVar[BillingMode]
    BILLING_MODE_SHADOW: _ClassVar[BillingMode]
    BILLING_MODE_UNBILLED: _ClassVar[BillingMode]
BILLING_MODE_UNSPECIFIED: BillingMode
BILLING_MODE_CHARGED: BillingMode
BILLING_MODE_SHADOW: BillingMode
BILLING_MODE_UNBILLED: BillingMode

class UsageRecorded(_message.Message):
    __slots__ = ("meta", "usage_id", "user_id", "model", "input_tokens", "output_tokens", "charged_millicredits", "cost_millicredits", "rate_card_version", "hold_id", "mode", "idempotency_key", "provider_request_id")
    META_FIELD_NUMBER: _ClassVar[int]
    USAGE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    COST_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    RATE_CARD_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    usage_id: str
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    charged_millicredits: int
    cost_millicredits: int
    rate_card_version: str
    hold_id: str
    mode: BillingMode
    idempotency_key: str
    provider_request_id: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., usage_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., charged_millicredits: _Optional[int] = ..., cost_millicredits: _Optional[int] = ..., rate_card_version: _Optional[str] = ..., hold_id: _Optional[str] = ..., mode: _Optional[_Union[BillingMode, str]] = ..., idempotency_key: _Optional[str] = ..., provider_request_id: _Optional[str] = ...) -> None: ...
