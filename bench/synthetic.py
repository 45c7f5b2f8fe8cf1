"""Synthetic homelabs of any size, shaped like examples/inventory.yaml.

Shared by the scheduler and the latency benchmarks (and the soak test): an
inventory of N nodes, each with a GPU and room for a large fleet, images with a
template on every node, a network pool and a VMID range big enough for every
machine; and a fleet of M XMachines, either all pending or all but the last
holding a placement recorded in their status (steady state).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

NS = "bench"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyOnlyForBenchmarks bench@laptop"
VMID_START = 5000
POOL_START = ipaddress.IPv4Address("10.0.1.0")
GPU_EVERY = 10  # every tenth machine asks for a GPU while there are GPUs left to give


def node_name(i: int) -> str:
    """The name of the i-th synthetic node."""
    return f"node-{i:03d}"


def inventory(nodes: int) -> dict[str, Any]:
    """An inventory document (the data under the ConfigMap key) with `nodes` nodes."""
    names = [node_name(i) for i in range(nodes)]
    return {
        "nodes": [_node(name) for name in names],
        "deviceClasses": {
            "gpu": {"matches": ["gpu-nvidia", "gpu-amd"], "description": "any GPU"},
            "gpu-nvidia": {"description": "NVIDIA GPU"},
        },
        "images": {
            "debian-12": _image("debian", names, 100),
            "ubuntu-24.04": _image("ubuntu", names, 100 + nodes),
        },
        "networks": {
            "lan": {
                "bridge": "vmbr0",
                "cidr": "10.0.0.0/16",
                "gateway": "10.0.0.1",
                "dns": {"servers": ["10.0.0.1"], "domain": "bench.lan"},
                "pool": {"start": str(POOL_START), "end": "10.0.250.254"},
                "reserved": ["10.0.1.5"],
            },
        },
        "classes": {
            "small": {"cpu": 1, "memory": "1Gi", "disk": "16Gi", "image": "debian-12"},
            "medium": {"cpu": 2, "memory": "2Gi", "disk": "32Gi", "image": "debian-12"},
        },
        "vmids": {"start": VMID_START, "end": 99999},
        "reservedVmids": [VMID_START + 3],
        "unmanaged": [
            {"vmid": 101 + 2 * nodes, "name": "router", "node": names[0], "cpu": 2, "memory": "4Gi"}
        ],
        "overcommit": {"cpu": 4.0, "memory": 1.0},
        "scoring": "spread",
    }


def _node(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "cpu": 128,
        "memory": "1024Gi",
        "reservedMemory": "4Gi",
        "storage": ["local-zfs", "local"],
        "snippetsDatastore": "local",
        "labels": {"rack": "a"},
        "devices": [
            {
                "mapping": f"gpu-{name}",
                "class": "gpu-nvidia",
                "bus": "pci",
                "address": "0000:01:00.0",
                "ids": ["10de:2484", "10de:228b"],
                "model": "NVIDIA GeForce RTX 3070",
            }
        ],
    }


def _image(os_family: str, names: list[str], first_vmid: int) -> dict[str, Any]:
    templates = {name: first_vmid + i for i, name in enumerate(names)}
    return {"os": os_family, "templates": templates, "minDisk": "8Gi"}


def configmap(nodes: int) -> dict[str, Any]:
    """The inventory ConfigMap, as Crossplane returns it for the label selector."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "fabric-inventory",
            "namespace": "crossplane-system",
            "labels": {"fabric.homelab.io/inventory": "homelab"},
        },
        "data": {"inventory.yaml": yaml.safe_dump(inventory(nodes), sort_keys=False)},
    }


def wants_gpu(i: int, nodes: int) -> bool:
    """Whether machine i asks for a GPU (every tenth, while each node still has one free)."""
    return i % GPU_EVERY == 0 and i // GPU_EVERY < nodes


def spec(i: int, nodes: int) -> dict[str, Any]:
    """The claim spec of machine i: small or medium, some with a GPU or a spread group."""
    body: dict[str, Any] = {
        "class": "small" if i % 2 else "medium",
        "network": {"name": "lan"},
        "roles": ["docker-host"] if i % 3 == 0 else [],
        "bootstrap": {"adminUser": "admin", "sshAuthorizedKeys": [KEY]},
    }
    if wants_gpu(i, nodes):
        body["image"] = "ubuntu-24.04"
        body["devices"] = [{"class": "gpu", "count": 1}]
    if i % 7 == 0:
        body["placement"] = {"spreadGroup": f"group-{i % 5}"}
    return body


def machine_name(i: int) -> str:
    """The claim name of machine i."""
    return f"machine-{i:04d}"


def created(i: int) -> str:
    """Creation timestamps in fleet order (one second apart)."""
    hours, rest = divmod(i, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"2026-11-01T{hours:02d}:{minutes:02d}:{seconds:02d}Z"


def held_status(i: int, nodes: int) -> dict[str, Any]:
    """A plausible placement recorded in the status of machine i (steady state)."""
    node = node_name(i % nodes) if not wants_gpu(i, nodes) else node_name(i // GPU_EVERY)
    address = f"{POOL_START + i + 10}/16"
    status: dict[str, Any] = {
        "phase": "Running",
        "node": node,
        "vmId": VMID_START + 10 + i,
        "address": address,
        "network": "lan",
        "ip": address.split("/", 1)[0],
        "devices": [],
    }
    if wants_gpu(i, nodes):
        status["devices"] = [{"class": "gpu-nvidia", "node": node, "mapping": f"gpu-{node}"}]
    return status


def xr(i: int, nodes: int, *, held: bool) -> dict[str, Any]:
    """XMachine i of the fleet, legacy (claim-backed) as on Crossplane 1.x."""
    name = machine_name(i)
    body: dict[str, Any] = {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": "XMachine",
        "metadata": {
            "name": f"{name}-x{i:05d}",
            "uid": f"uid-{NS}-{name}",
            "creationTimestamp": created(i),
            "labels": {
                "crossplane.io/claim-name": name,
                "crossplane.io/claim-namespace": NS,
                "crossplane.io/composite": f"{name}-x{i:05d}",
            },
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}" * 40},
            "generation": 3,
            "resourceVersion": str(100000 + i),
        },
        "spec": {
            **spec(i, nodes),
            "claimRef": {"apiVersion": "fabric.homelab.io/v1alpha1", "kind": "Machine"},
            "compositionRef": {"name": "xmachines.fabric.homelab.io"},
            "resourceRefs": [
                {"apiVersion": "tf.upbound.io/v1beta1", "kind": "Workspace", "name": name}
            ],
        },
    }
    if held:
        body["status"] = held_status(i, nodes)
    return body


def fleet(machines: int, nodes: int, *, steady: bool) -> list[dict[str, Any]]:
    """The fleet: in steady state every machine but the last holds a placement."""
    return [xr(i, nodes, held=steady and i < machines - 1) for i in range(machines)]
