"""Category lists: plain files of domains, one per line, e.g. from the school's filtering
provider. The file name is the category; a `# severity: immediate|weekly` line sets how the
alert is handled (default weekly: it goes in the weekly report to the DSL)."""

from __future__ import annotations

from pathlib import Path

from service.errors import Invalid
from service.monitor.bypass import (
    BypassLists,
    allow_kind_of,
    bypass_kind_of,
    load_allow_list,
    load_bypass_list,
)

SEVERITIES = ("immediate", "weekly")


class CategoryList:
    def __init__(self) -> None:
        self.domains: dict[str, tuple[str, str]] = {}  # domain -> (category, severity)
        # The folder's `# bypass: KIND` lists (doh.txt, vpn.txt, ...): bypass.py reads them.
        self.bypass = BypassLists()

    def add(self, category: str, severity: str, domains: list[str]) -> None:
        if severity not in SEVERITIES:
            raise Invalid(f"category {category}: severity must be one of {', '.join(SEVERITIES)}")
        for domain in domains:
            self.domains[domain.strip().lower().rstrip(".")] = (category, severity)

    def match(self, name: str) -> tuple[str, str] | None:
        """(category, severity) if `name` or any parent domain is listed."""
        labels = name.lower().rstrip(".").split(".")
        for start in range(len(labels) - 1):
            found = self.domains.get(".".join(labels[start:]))
            if found is not None:
                return found
        return self.domains.get(labels[-1]) if labels else None

    def __len__(self) -> int:
        return len(self.domains)


def load_categories(directory: str | Path) -> CategoryList:
    """Every `*.txt` or `*.list` file in `directory`: a category, with a `# bypass: KIND`
    line a list of the bypass detector's (bypass.py), or with `# allow: dns-tunnel` the
    domains the DNS-tunnel heuristic leaves alone (dns_allow.txt)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise Invalid(f"no category directory at {folder}")
    result = CategoryList()
    for path in sorted([*folder.glob("*.txt"), *folder.glob("*.list")]):
        severity = "weekly"
        bypass = None
        allow = None
        domains = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for raw in lines:
            line = raw.strip()
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                key = key.strip().lower()
                if key == "severity":
                    severity = value.strip().lower()
                elif key == "bypass":
                    bypass = bypass_kind_of(value)
                elif key == "allow":
                    allow = allow_kind_of(value)
                continue
            if line:
                domains.append(line.split()[0])
        if allow is not None:
            if bypass is not None:
                raise Invalid(f"{path.name}: a list is either `# bypass:` or `# allow:`")
            load_allow_list(result.bypass, path, lines)
        elif bypass is not None:
            load_bypass_list(result.bypass, path, bypass, lines)
        else:
            result.add(path.stem, severity, domains)
    return result
