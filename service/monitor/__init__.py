"""Traffic-metadata monitor (issue 6): flows, DNS, server names, DHCP/ARP bindings, visits, P2P
and category alerts, attributed to devices and people. Metadata only, never payloads."""
