"""gated_vpt's member of peft's ``PeftType`` enum, which the config needs when it is built and registration when it
tells peft about the method (so it lives below both)."""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def extend_peft_type(name: str) -> PeftType:
    """Add ``name.upper()`` as a member of peft's ``PeftType`` str-enum, or return the existing member."""
    key = name.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    if hasattr(PeftType, "_sort_order_"):
        member._sort_order_ = len(PeftType._member_names_)
    member.__init__()
    PeftType._member_names_.append(key)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    # EnumType.__setattr__ guards member names, so the class attribute is set through type.
    type.__setattr__(PeftType, key, member)
    return member
