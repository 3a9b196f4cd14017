"""Deployment formats behind one interface (`base.Backend`): one package per backend (export, run, op
inventory, int8), and `registry` to find them by name or artifact suffix."""
