"""evtwin.csms."""
