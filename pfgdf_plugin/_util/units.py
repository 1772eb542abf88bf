"""Numbers as people read them: SI-prefixed counts and byte sizes, one formatter each."""

from __future__ import annotations


def si(value: float | None, digits: int = 3, sep: str = " ") -> str:
    """``1.82e9`` -> ``'1.820 G'``; ``None`` -> ``'-'``.

    Examples:
        >>> si(1_820_000_000), si(12_345, 2, sep=""), si(None)
        ('1.820 G', '12.35K', '-')
    """
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{sep}{unit}"
    return f"{value:.0f}"


def file_size(n: int) -> str:
    """Bytes as ``'1.23 MB'`` or ``'45.6 kB'``.

    Examples:
        >>> file_size(1_234_567), file_size(45_600)
        ('1.23 MB', '45.6 kB')
    """
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
