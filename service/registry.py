"""One import for the service functions the adapters (CLI, portal, RADIUS) call."""

from service.agreements import (
    aua_expiry,
    current_agreement,
    parse_kind,
    publish_agreement,
    sign_agreement,
)
from service.devices import (
    add_device,
    approve_device,
    exit_device,
    get_device,
    import_devices,
    parse_class,
    report_lost,
    revoke_device,
)
from service.grants import grant_exception, revoke_exception
from service.people import add_person, find_person, leave_person, set_password, verify_password
from service.sites import add_nas, add_site, get_site, load_policy_file, store_policy

__all__ = [
    "add_device",
    "add_nas",
    "add_person",
    "add_site",
    "approve_device",
    "aua_expiry",
    "current_agreement",
    "exit_device",
    "find_person",
    "get_device",
    "get_site",
    "grant_exception",
    "import_devices",
    "leave_person",
    "load_policy_file",
    "parse_class",
    "parse_kind",
    "publish_agreement",
    "report_lost",
    "revoke_device",
    "revoke_exception",
    "set_password",
    "sign_agreement",
    "store_policy",
    "verify_password",
]
