"""ESR_ELx: exception class, instruction length and the ISS, encoded and decoded (ARM ARM D19.2.37).

The machine layer synthesises ESR_EL2 with these functions (Unicorn does not write it), and
everything that shows an ESR to a person decodes it here, so both directions are tested together.
"""

from __future__ import annotations

from dataclasses import dataclass

EC_SHIFT = 26
IL = 1 << 25

EC_UNKNOWN = 0x00
EC_WFX = 0x01
EC_SVC32 = 0x11
EC_SVC64 = 0x15
EC_HVC64 = 0x16
EC_SMC64 = 0x17
EC_SYS64 = 0x18
EC_IABT_LOW = 0x20
EC_IABT_CUR = 0x21
EC_PC_ALIGN = 0x22
EC_DABT_LOW = 0x24
EC_DABT_CUR = 0x25
EC_SP_ALIGN = 0x26
EC_BKPT32 = 0x38
EC_BRK64 = 0x3C

EC_NAMES = {
    EC_UNKNOWN: "Unknown reason (e.g. an UNDEFINED instruction)",
    EC_WFX: "WFI or WFE instruction trapped",
    EC_SVC32: "SVC instruction from AArch32",
    EC_SVC64: "SVC instruction from AArch64",
    EC_HVC64: "HVC instruction from AArch64",
    EC_SMC64: "SMC instruction from AArch64",
    EC_SYS64: "MSR/MRS/system instruction trapped",
    EC_IABT_LOW: "Instruction Abort from a lower Exception level",
    EC_IABT_CUR: "Instruction Abort taken without a change in Exception level",
    EC_PC_ALIGN: "PC alignment fault",
    EC_DABT_LOW: "Data Abort from a lower Exception level",
    EC_DABT_CUR: "Data Abort taken without a change in Exception level",
    EC_SP_ALIGN: "SP alignment fault",
    EC_BKPT32: "BKPT instruction from AArch32",
    EC_BRK64: "BRK instruction from AArch64",
}

# ISS of a data abort (ARM ARM D19.2.37, "ISS encoding for an exception from a Data Abort")
ISS_ISV = 1 << 24
ISS_SAS_SHIFT = 22
ISS_SSE = 1 << 21
ISS_SRT_SHIFT = 16
ISS_SF = 1 << 15
ISS_AR = 1 << 14
ISS_S1PTW = 1 << 7
ISS_WNR = 1 << 6
FSC_MASK = 0x3F

FSC_TRANSLATION = 0b000100
FSC_ACCESS = 0b001000
FSC_PERMISSION = 0b001100


def fsc_words(fsc: int) -> str:
    """A DFSC/IFSC value in the ARM ARM's words, e.g. ``0b000111`` -> "Translation fault, level 3"."""
    kind = {0b0000: "Address size fault", 0b0001: "Translation fault", 0b0010: "Access flag fault",
            0b0011: "Permission fault"}.get(fsc >> 2)
    if kind is not None:
        return f"{kind}, level {fsc & 3}"
    return {0b010000: "Synchronous External abort", 0b100001: "Alignment fault",
            0b110000: "TLB conflict abort"}.get(fsc, f"fault status {fsc:#08b}")


def fsc_kind_level(fsc: int) -> tuple[str, int] | None:
    """``(kind, level)`` for translation/access/permission/address-size faults, else None."""
    kind = {0b0000: "address size", 0b0001: "translation", 0b0010: "access flag",
            0b0011: "permission"}.get(fsc >> 2)
    return None if kind is None else (kind, fsc & 3)


def encode(ec: int, iss: int = 0, il: bool = True) -> int:
    return (ec << EC_SHIFT) | (IL if il else 0) | (iss & 0x1FFFFFF)


def hvc(imm16: int) -> int:
    """ESR for ``HVC #imm16`` from AArch64: EC 0x16, IL=1, ISS = imm16."""
    return encode(EC_HVC64, imm16 & 0xFFFF)


def brk(imm16: int) -> int:
    return encode(EC_BRK64, imm16 & 0xFFFF)


def data_abort(*, lower: bool, fsc: int, wnr: bool, isv: bool = False, sas: int = 0,
               sse: bool = False, srt: int = 0, sf: bool = False, ar: bool = False,
               s1ptw: bool = False) -> int:
    """ESR for a data abort.  The syndrome fields (SAS..AR) are only valid, and only set, with ISV."""
    iss = fsc & FSC_MASK
    if wnr:
        iss |= ISS_WNR
    if s1ptw:
        iss |= ISS_S1PTW
    if isv:
        iss |= ISS_ISV | (sas & 3) << ISS_SAS_SHIFT | (srt & 31) << ISS_SRT_SHIFT
        iss |= (ISS_SSE if sse else 0) | (ISS_SF if sf else 0) | (ISS_AR if ar else 0)
    return encode(EC_DABT_LOW if lower else EC_DABT_CUR, iss)


def instruction_abort(*, lower: bool, fsc: int, s1ptw: bool = False) -> int:
    return encode(EC_IABT_LOW if lower else EC_IABT_CUR, (fsc & FSC_MASK) | (ISS_S1PTW if s1ptw else 0))


@dataclass(frozen=True)
class Esr:
    """A decoded ESR_ELx value."""

    value: int

    @property
    def ec(self) -> int:
        return (self.value >> EC_SHIFT) & 0x3F

    @property
    def il(self) -> bool:
        return bool(self.value & IL)

    @property
    def iss(self) -> int:
        return self.value & 0x1FFFFFF

    @property
    def is_abort(self) -> bool:
        return self.ec in (EC_DABT_LOW, EC_DABT_CUR, EC_IABT_LOW, EC_IABT_CUR)

    @property
    def fsc(self) -> int:
        return self.iss & FSC_MASK

    @property
    def wnr(self) -> bool:
        return self.ec in (EC_DABT_LOW, EC_DABT_CUR) and bool(self.iss & ISS_WNR)

    @property
    def isv(self) -> bool:
        return self.ec in (EC_DABT_LOW, EC_DABT_CUR) and bool(self.iss & ISS_ISV)

    @property
    def imm16(self) -> int:
        return self.iss & 0xFFFF

    def fields(self) -> dict[str, int | bool]:
        """Every field the ARM ARM defines for this EC, by its ARM ARM name."""
        out: dict[str, int | bool] = {"EC": self.ec, "IL": self.il}
        if self.ec in (EC_HVC64, EC_SVC64, EC_SVC32, EC_SMC64, EC_BRK64, EC_BKPT32):
            out["imm16"] = self.imm16
        elif self.ec in (EC_DABT_LOW, EC_DABT_CUR):
            if self.isv:
                out.update(ISV=True, SAS=(self.iss >> ISS_SAS_SHIFT) & 3, SSE=bool(self.iss & ISS_SSE),
                           SRT=(self.iss >> ISS_SRT_SHIFT) & 31, SF=bool(self.iss & ISS_SF),
                           AR=bool(self.iss & ISS_AR))
            else:
                out["ISV"] = False
            out.update(S1PTW=bool(self.iss & ISS_S1PTW), WnR=self.wnr, DFSC=self.fsc)
        elif self.ec in (EC_IABT_LOW, EC_IABT_CUR):
            out.update(S1PTW=bool(self.iss & ISS_S1PTW), IFSC=self.fsc)
        else:
            out["ISS"] = self.iss
        return out

    def words(self) -> str:
        """One line a person can read, e.g. "Data Abort from a lower Exception level: write, ..."."""
        name = EC_NAMES.get(self.ec, f"exception class {self.ec:#x}")
        if self.ec in (EC_HVC64, EC_SVC64, EC_SVC32, EC_SMC64, EC_BRK64, EC_BKPT32):
            return f"{name}, #{self.imm16:#x}"
        if self.ec in (EC_DABT_LOW, EC_DABT_CUR):
            parts = ["write" if self.wnr else "read", fsc_words(self.fsc)]
            if self.isv:
                f = self.fields()
                parts.append(f"{8 << f['SAS']}-bit access via {'x' if f['SF'] else 'w'}{f['SRT']}")
            if self.iss & ISS_S1PTW:
                parts.append("S1PTW set (pKVM: injected stage-2 abort)")
            return f"{name}: " + ", ".join(parts)
        if self.ec in (EC_IABT_LOW, EC_IABT_CUR):
            return f"{name}: {fsc_words(self.fsc)}"
        return name

    def __repr__(self) -> str:
        return f"Esr({self.value:#010x}: {self.words()})"


def decode(value: int) -> Esr:
    return Esr(value)


# PAR_EL1 after an AT instruction (ARM ARM D19.2.103)
def par_decode(par: int) -> dict[str, int | bool]:
    """PAR_EL1 as fields: on success the PA; on a fault FST, and S (stage 2) / PTW."""
    if par & 1:
        return {"F": True, "FST": (par >> 1) & 0x3F, "PTW": bool(par >> 8 & 1), "S": bool(par >> 9 & 1)}
    return {"F": False, "PA": par & 0x0000_FFFF_FFFF_F000, "ATTR": par >> 56, "SH": (par >> 7) & 3,
            "NS": bool(par >> 9 & 1)}
