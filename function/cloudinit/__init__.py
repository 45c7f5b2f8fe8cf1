"""cloud-init user-data: the template library and the composer that merges it into one document.

`compose(facts)` is the whole interface: it returns the `#cloud-config` text for a
machine or raises `FabricError` with a message for the claim.
"""

from function.cloudinit.composer import (
    MAX_USER_DATA_BYTES,
    available_devices,
    available_roles,
    check_roles,
    compose,
)
from function.cloudinit.facts import DeviceFact, GuestFacts, NetworkFact

__all__ = [
    "MAX_USER_DATA_BYTES",
    "DeviceFact",
    "GuestFacts",
    "NetworkFact",
    "available_devices",
    "available_roles",
    "check_roles",
    "compose",
]
