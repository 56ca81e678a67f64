"""All tables. Importing this module registers every model on `Base.metadata`.

Each area keeps its tables in its own module; migrations are the only way the schema changes.
"""

from service.models import coa as _coa  # noqa: F401  (enforcement tables)
from service.models import ledger as _ledger  # noqa: F401  (accounting records, issue 13)
from service.models import names as _names  # noqa: F401  (device names seen on the network)
from service.models import portal as _portal  # noqa: F401  (API tokens, portal state)
from service.models import throttle as _throttle  # noqa: F401  (sign-in failure counts)
from service.models import traffic as _traffic  # noqa: F401  (monitor tables)
from service.models import visitors as _visitors  # noqa: F401  (visitor verification)
from service.models.base import Base, utcnow
from service.models.changes import ChangeKind, ChangeLogEntry
from service.models.core import (
    AccessException,
    AccountingSession,
    Agreement,
    Approval,
    AuditEntry,
    ChangeCounter,
    DecisionRecord,
    Device,
    Incident,
    Location,
    NasClient,
    Person,
    Signature,
    Site,
    SitePolicy,
)

__all__ = [
    "AccessException",
    "AccountingSession",
    "Agreement",
    "Approval",
    "AuditEntry",
    "Base",
    "ChangeCounter",
    "ChangeKind",
    "ChangeLogEntry",
    "DecisionRecord",
    "Device",
    "Incident",
    "Location",
    "NasClient",
    "Person",
    "Signature",
    "Site",
    "SitePolicy",
    "utcnow",
]
