"""The portal's pages, one router per journey: captive probes and landing, visitor, staff."""
