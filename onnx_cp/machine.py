"""The machine a figure was measured on: CPU model, its vector ISA, cores, onnxruntime version.

    machine = describe_machine()
    machine.label   # 'Intel(R) Xeon(R) Processor, AVX-512 VNNI + AMX, 2 cores, onnxruntime 1.32.0'

Speed-ups differ between CPU families (onnxruntime's kernels and its NCHWc block size follow the
ISA: 8 channels with AVX2, 16 with AVX-512), so every timing names the machine it came from.
Linux reads /proc/cpuinfo; macOS asks sysctl; elsewhere the platform module's names are used
and the ISA is 'unknown ISA'.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

UNKNOWN_ISA = "unknown ISA"
# Highest first: the first level whose flags the CPU has all of names its ISA. Flags are compared
# lower-case without '_' or '.', so Linux's 'avx512_vnni' and macOS's 'AVX512VNNI' read alike.
_LEVELS = (
    ("AVX-512 VNNI", ("avx512f", "avx512vnni")),
    ("AVX-512", ("avx512f",)),
    ("AVX2", ("avx2",)),
    ("AVX", ("avx",)),
    ("SSE4.2", ("sse42",)),
    ("SVE2", ("sve2",)),
    ("SVE", ("sve",)),
    ("NEON", ("asimd",)),
)
# Extensions named after the level when present (matrix tiles; VNNI on AVX2-only CPUs).
_EXTRAS = (("AMX", ("amxtile",)), ("AVX-VNNI", ("avxvnni",)))


@dataclass(frozen=True)
class Machine:
    """What a timing depends on besides the model: the CPU, its ISA, the cores, onnxruntime."""

    cpu: str  # the CPU's model name
    isa: str  # e.g. 'AVX2', 'AVX-512 VNNI + AMX', 'NEON'
    cores: int  # logical CPUs this process may run on
    onnxruntime: str  # its version, '' when it is not installed

    @property
    def label(self) -> str:
        """One line for reports: 'CPU, ISA, N cores, onnxruntime V'."""
        cores = "1 core" if self.cores == 1 else f"{self.cores} cores"
        runtime = f"onnxruntime {self.onnxruntime}" if self.onnxruntime else "onnxruntime not installed"
        return f"{self.cpu}, {self.isa}, {cores}, {runtime}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


@functools.lru_cache(maxsize=1)
def describe_machine() -> Machine:
    """This machine (read once per process)."""
    cpu, flags = _cpu()
    return Machine(cpu=cpu, isa=isa_level(flags), cores=_cores(), onnxruntime=_onnxruntime_version())


def isa_level(flags) -> str:
    """The highest vector ISA level that ``flags`` (CPU feature names, any case) show, with AMX or
    AVX-VNNI after it when present: 'AVX-512 VNNI + AMX', 'AVX2 + AVX-VNNI', 'NEON', or 'unknown ISA'."""
    have = {_flag(f) for f in flags}
    level = next((name for name, needs in _LEVELS if all(n in have for n in needs)), None)
    extras = [name for name, needs in _EXTRAS if all(n in have for n in needs)]
    if level is None:
        return " + ".join(extras) or UNKNOWN_ISA
    if level.startswith("AVX-512"):  # AVX-512 VNNI holds AVX-VNNI's instructions and more
        extras = [e for e in extras if e != "AVX-VNNI"]
    return " + ".join([level, *extras])


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, feature flags) from the text of Linux's /proc/cpuinfo; ('', set()) for what it lacks.

    x86 lists 'model name' and 'flags'; ARM lists 'Features' and often no model name at all.
    """
    name, flags = "", set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = " ".join(value.split())
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def _cpu() -> tuple[str, set[str]]:
    name, flags = "", set()
    system = platform.system()
    if system == "Linux":
        try:
            name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            pass
    elif system == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        flags = set(_sysctl("machdep.cpu.features").split()) | set(_sysctl("machdep.cpu.leaf7_features").split())
        if platform.machine() == "arm64":
            flags.add("asimd")  # every Apple silicon core has NEON
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return name, flags


def _sysctl(key: str) -> str:
    try:
        done = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _onnxruntime_version() -> str:
    try:
        from onnx_cp.runtime import version

        return version()
    except ImportError:
        return ""


def _flag(name: str) -> str:
    return name.lower().replace("_", "").replace(".", "")
