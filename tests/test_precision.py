"""bf16 autocast by default only where the device computes bf16 natively."""

import pytest

from worldsim.core.precision import cpu_flags, describe_bf16, native_bf16, resolve_bf16

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni{extra}\nbugs\t\t: spectre_v1\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve{extra}\nCPU part\t: 0xd40\n"


@pytest.mark.parametrize(
    ("text", "native"),
    [
        (X86.format(extra=""), False),  # AVX-512 without BF16: emulated, slower than fp32
        (X86.format(extra=" avx512_bf16"), True),
        (X86.format(extra=" amx_tile amx_bf16"), True),
        (ARM.format(extra=""), False),
        (ARM.format(extra=" bf16 i8mm"), True),
        ("model name\t: something\n", False),
    ],
)
def test_native_bf16_from_the_cpu_flags(tmp_path, text, native):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert native_bf16("cpu", info) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_flags(tmp_path / "missing") == set() and native_bf16("cpu", tmp_path / "missing") is False


def test_an_explicit_setting_wins_and_none_follows_the_machine():
    assert resolve_bf16(True) is True and resolve_bf16(False) is False
    assert resolve_bf16(None) is native_bf16()
    assert describe_bf16(False) == "bf16 autocast off (bf16=false)"
    auto = describe_bf16(None)
    assert auto.startswith("bf16 autocast on" if native_bf16() else "bf16 autocast off") and "bf16=true/false" in auto
