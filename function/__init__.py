"""Fabric: a Crossplane composition function for Proxmox VE machines."""
