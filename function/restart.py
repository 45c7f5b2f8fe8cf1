"""The claim's restartPolicy: how a change that needs a restart reaches a running guest.

`OnNextBoot` (the default): the module says `reboot_after_update = false`; bpg writes the change
to the VM's configuration as pending and never restarts the guest; the claim says the change
waits for the owner's restart. `Immediate`: `reboot_after_update = true`; bpg shuts the guest
down and starts it again in the same apply (bpg v0.111.1 vmUpdate: cpu, memory and cloud-init
settings among what needs it). Either way the claim announces it when Fabric renders the change,
which is before provider-terraform applies it.
"""

from __future__ import annotations

from typing import Any

from function import terraform, workspace
from function.record import dig, module_of

_VM = terraform.VM_PATH
# bpg restarts a running guest for these too when reboot_after_update is true (cloud-init
# settings the inventory's networks give: DNS servers, gateway).
_INITIALIZATION = (*_VM, "initialization")


def _running(desired: dict[str, Any]) -> bool:
    return dig(module_of(desired), *_VM, "started") is not False


def announcements(
    policy: str, observed: dict[str, Any] | None, desired: dict[str, Any]
) -> list[str]:
    """What the claim says about restarts this render asks of the running guest."""
    changes = workspace.restart_changes(observed, desired)
    if policy != "Immediate":
        return [
            f"the claim changed the machine's {what}; Proxmox applies it when the guest next "
            "restarts, and Fabric never restarts a running machine: restart it when it suits you"
            for what in changes
        ]
    if observed is not None:
        was = dig(module_of(observed), *_INITIALIZATION)
        if was is not None and was != dig(module_of(desired), *_INITIALIZATION):
            changes.append("cloud-init settings (the network's DNS or gateway)")
    if not changes:
        return []
    what = "; ".join(changes)
    if not _running(desired):
        note = (
            f"the machine's {what} changes at the next apply; it is stopped, so it gets "
            "them when it next starts (restartPolicy: Immediate)"
        )
    else:
        note = (
            f"the claim changed the machine's {what}; restartPolicy is Immediate: Proxmox "
            "restarts the machine at the next apply to apply it (a clean shutdown, then a start)"
        )
    return [note]
