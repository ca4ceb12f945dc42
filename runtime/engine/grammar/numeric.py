"""Numeric bounds as GBNF: canonical decimal integers (or decimals) within whole-number bounds."""

from __future__ import annotations

import math


def _digit_class(lo: int, hi: int) -> str:
    return f"[{lo}]" if lo == hi else f"[{lo}-{hi}]"


def _digits_between(a: str, b: str) -> str:
    """GBNF for the digit strings of one length from `a` to `b` (inclusive)."""
    if not a:
        return ""
    if a == b:
        return f'"{a}"'
    if a[0] == b[0]:
        return f'"{a[0]}" ' + _digits_between(a[1:], b[1:])
    n = len(a) - 1
    low_full, high_full = a[1:] == "0" * n, b[1:] == "9" * n
    first, last = int(a[0]) + (0 if low_full else 1), int(b[0]) - (0 if high_full else 1)
    alts = []
    if not low_full:
        alts.append(f'"{a[0]}" ' + _digits_between(a[1:], "9" * n))
    if first <= last:
        alts.append(_digit_class(first, last) + (f" [0-9]{{{n}}}" if n else ""))
    if not high_full:
        alts.append(f'"{b[0]}" ' + _digits_between("0" * n, b[1:]))
    return "(" + " | ".join(alts) + ")"


MAX_DIGITS = 16


def _uint_range(lo: int, hi: int | None) -> str:
    """Canonical decimal integers (no leading zeros) from `lo` to `hi` (None: unbounded)."""
    alts = []
    top = len(str(hi)) if hi is not None else len(str(lo))
    for length in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = 10**length - 1 if hi is None else min(hi, 10**length - 1)
        if a <= b:
            alts.append(_digits_between(str(a), str(b)))
    if hi is None and len(str(lo)) < MAX_DIGITS:
        alts.append(f"[1-9] [0-9]{{{len(str(lo))},{MAX_DIGITS - 1}}}")
    return "(" + " | ".join(alts) + ")"


def number_range(lo: float | None, hi: float | None, *, integral: bool) -> str:
    """GBNF for integers (or decimals) within inclusive bounds that are whole numbers."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError("minimum is above maximum")
    frac = "" if integral else ' ("." [0-9]{1,15})?'
    zero_frac = "" if integral else ' ("." "0"{1,15})?'

    def magnitudes(m_lo: int, m_hi: int | None) -> str:
        # |x| from m_lo to m_hi: any fraction below the top, only .0 at the top itself.
        if integral or m_hi is None:
            return _uint_range(m_lo, m_hi) + frac
        alts = [f'"{m_hi}"{zero_frac}']
        if m_lo <= m_hi - 1:
            alts.insert(0, _uint_range(m_lo, m_hi - 1) + frac)
        return "(" + " | ".join(alts) + ")"

    ilo = None if lo is None else math.ceil(lo)
    ihi = None if hi is None else math.floor(hi)
    alts = []
    if ihi is None or ihi >= 0:
        alts.append(magnitudes(max(ilo, 0) if ilo is not None else 0, ihi))
    if ilo is None or ilo < 0:
        low_mag = 1 if integral else 0  # "-0.5" is negative; "-0" is not worth allowing
        m_lo = max(-ihi, low_mag) if ihi is not None and ihi < 0 else low_mag
        neg = magnitudes(m_lo, None if ilo is None else -ilo)
        alts.append(f'"-" {neg}' if integral else f'"-" ({neg})')
    return " | ".join(alts)
