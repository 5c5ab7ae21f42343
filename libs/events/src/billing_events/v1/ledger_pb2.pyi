from billing_events.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_KIND_UNSPECIFIED: _ClassVar[TransactionKind]
    TRANSACTION_KIND_PURCHASE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_USAGE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_REFUND: _ClassVar[TransactionKind]
    TRANSACTION_KIND_ADJUSTMENT: _ClassVar[TransactionKind]
    TRANSACTION_KIND_REVERSAL: _ClassVar[TransactionKind]
    TRANSACTION_KIND_HOLD: _ClassVar[TransactionKind]
    TRANSACTION_KIND_HOLD_RELEASE: _ClassVar[TransactionKind]
TRANSACTION_KIND_UNSPECIFIED: TransactionKind
TRANSACTION_KIND_PURCHASE: TransactionKind
TRANSACTION_KIND_USAGE: TransactionKind
TRANSACTION_KIND_REFUND: TransactionKind
TRANSACTION_KIND_ADJUSTMENT: TransactionKind
TRANSACTION_KIND_REVERSAL: TransactionKind
TRANSACTION_KIND_HOLD: TransactionKind
TRANSACTION_KIND_HOLD_RELEASE: TransactionKind

class LedgerEntry(_message.Message):
    __slots__ = ("account", "amount_millicredits")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    account: str
    amount_millicredits: int
    def __init__(self, account: _Optional[str] = ..., amount_millicredits: _Optional[int] = ...) -> None: ...

class LedgerTransactionPosted(_message.Message):
    __slots__ = ("meta", "transaction_id", "kind", "user_id", "reference_id", "entries", "balance_after_millicredits", "posted_at", "reverses_transaction_id")
    META_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    POSTED_AT_FIELD_NUMBER: _ClassVar[int]
    REVERSES_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    transaction_id: str
    kind: TransactionKind
    user_id: str
    reference_id: str
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    balance_after_millicredits: int
    posted_at: _timestamp_pb2.Timestamp
    reverses_transaction_id: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., transaction_id: _Optional[str] = ..., kind: _Optional[_Union[TransactionKind, str]] = ..., user_id: _Optional[str] = ..., reference_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., balance_after_millicredits: _Optional[int] = ..., posted_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., reverses_transaction_id: _Optional[str] = ...) -> None: ...
