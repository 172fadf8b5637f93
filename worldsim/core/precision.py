"""Whether bf16 autocast pays on this machine.

A device that computes bf16 natively runs the small transformers here faster under bf16
autocast; on a CPU without bf16 instructions torch converts every operand and autocast runs
slower than fp32 (the shipped teacher: 0.70 s per chunk against 0.31 s in fp32 on an AVX-512
CPU without BF16; docs/engine.md). Commands take ``bf16=null`` (their default) to mean "on
where the device has it".
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (two kinds), Arm


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags from Linux's ``cpuinfo`` (``flags`` on x86, ``Features`` on Arm);
    empty where the file is missing (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(device: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA device that supports it, or a CPU that
    lists one of :data:`NATIVE_BF16_FLAGS`."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def resolve_bf16(setting: bool | None, device: str = "cpu") -> bool:
    """A command's ``bf16`` setting: ``True`` / ``False`` as given, ``None`` = :func:`native_bf16`."""
    return native_bf16(device) if setting is None else setting


def describe_bf16(setting: bool | None, device: str = "cpu") -> str:
    """One line for a command's start: what autocast will do and why."""
    on = resolve_bf16(setting, device)
    if setting is not None:
        return f"bf16 autocast {'on' if on else 'off'} (bf16={str(setting).lower()})"
    why = "has native bf16" if on else "has no native bf16, where fp32 is faster"
    where = "CPU" if device == "cpu" else f"device {device}"
    return f"bf16 autocast {'on' if on else 'off'}: the {where} {why} (bf16=true/false to choose)"
